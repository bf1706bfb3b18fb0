"""The datasource collection: pages, sorts, filters and sparse fieldsets, the default page size,
bad query parameters named in a 400, and include=agents.
"""

from __future__ import annotations

import pytest

from api_server.services.listing import MAX_PAGE_SIZE


def test_collection_pages_sorts_filters_and_sparse_fields(api):
    org = api.create_org()
    for name in ("c", "a", "b"):
        api.create_datasource(org.key, name=name)
    page = api.get("/datasources?page[size]=2&page[number]=2&sort=-name", org.key).json()
    assert page["meta"]["total"] == 4
    assert [d["attributes"]["name"] for d in page["data"]] == ["b", "a"]
    assert page["links"]["prev"] and page["links"]["next"] is None
    assert "page%5Bnumber%5D=1" in page["links"]["first"]
    first = api.get("/datasources?page[size]=2&sort=-name", org.key).json()
    assert [d["attributes"]["name"] for d in first["data"]] == ["Sample Data", "c"]
    filtered = api.get("/datasources?filter[name]=b", org.key).json()
    assert [d["attributes"]["name"] for d in filtered["data"]] == ["b"]
    by_type = api.get("/datasources?filter[database_type]=sample", org.key).json()
    assert [d["id"] for d in by_type["data"]] == [org.sample_datasource_id]
    assert api.get("/datasources?filter[database_type]=mysql", org.key).json()["data"] == []
    assert api.get("/filters?filter[control_type]=dropdown", org.key).status_code == 200
    # A value no datasource can have is a mistake, not "none match" (the outside probe's case).
    for path in (
        "/datasources?filter[database_type]=SAMPLE",
        "/filters?filter[control_type]=",
        "/filters?filter[options_source]=bogus",
    ):
        refused = api.get(path, org.key)
        assert refused.status_code == 400, path
        error = refused.json()["errors"][0]
        assert error["source"]["parameter"] == path.split("?")[1].split("=")[0], path
        assert "must be one of" in error["detail"], path
    sparse = api.get("/datasources?fields[datasources]=name", org.key).json()
    assert all(
        set(d["attributes"]) == {"name"} and "relationships" not in d for d in sparse["data"]
    )


def test_a_list_without_page_size_answers_whole_up_to_the_page_limit(api):
    """Found by an outside probe of Cluvio compatibility: Cluvio's lists have no paging and
    answer whole, and a client written for them read the first 20 (the default page) as the
    whole list. Without ``page[size]`` a list now answers up to MAX_PAGE_SIZE resources; past
    that, ``links.next`` still says there is more."""
    org = api.create_org()
    api.area(org).joinpath("many").mkdir()

    def add(count: int, start: int) -> None:
        with api.app.state.sessions.begin() as session:
            from shared.db.models import Datasource

            session.add_all(
                Datasource(
                    organization_id=org.id, name=f"ds{i:04}", database_type="files", database="many"
                )
                for i in range(start, start + count)
            )

    add(24, 0)
    listing = api.get("/datasources", org.key).json()
    assert len(listing["data"]) == listing["meta"]["total"] == 25
    assert listing["links"]["next"] is None
    add(MAX_PAGE_SIZE + 1 - 25, 24)
    listing = api.get("/datasources", org.key).json()
    assert len(listing["data"]) == MAX_PAGE_SIZE and listing["meta"]["total"] == MAX_PAGE_SIZE + 1
    assert "page%5Bnumber%5D=2" in listing["links"]["next"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (f"page[size]={MAX_PAGE_SIZE + 1}", "page[size]"),
        ("page[size]=0", "page[size]"),
        ("page[number]=-1", "page[number]"),
        ("page[number]=abc", "page[number]"),
        ("sort=password", "sort"),
        ("filter[password]=x", "filter[password]"),
        ("fields[datasources]=secret_stuff", "fields[datasources]"),
        ("include=owner", "include"),
        ("foo=bar", "foo"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(api, query, parameter):
    org = api.create_org()
    response = api.get(f"/datasources?{query}", org.key)
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"] == {"parameter": parameter}


def test_include_agents_is_accepted(api):
    org = api.create_org()
    listing = api.get("/datasources?include=agents", org.key).json()
    assert listing["included"] == []
    single = api.get(f"/datasources/{org.sample_datasource_id}?include=agents", org.key).json()
    assert single["included"] == []
