def test_admin_token_lists_agents(api, agent):
    response = api.get("/api/v1/agents")
    assert response.status_code == 200
    assert {a["name"] for a in response.json()["results"]} == {"admin", agent.name}
