def test_sample_datasource_listed(api):
    org = api.create_org()
    response = api.get("/datasources", org.key)
    assert response.status_code == 200
    assert [d["attributes"]["database_type"] for d in response.json()["data"]] == ["sample"]
