"""The subcommands of ``dataferry``, each module with the options it reads; dataferry_client/cli.py
puts them into one parser and turns their failures into exit codes (commands/exit_codes.py)."""
