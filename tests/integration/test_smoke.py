from support import wait_for


def test_two_nodes_list_each_other(nats_server, channel, spawn):
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}
    a = spawn("a.example", env)
    b = spawn("b.example", env)
    wait_for(lambda: a.hostnames() == ["a.example", "b.example"], what="a lists both")
    wait_for(lambda: b.hostnames() == ["a.example", "b.example"], what="b lists both")
