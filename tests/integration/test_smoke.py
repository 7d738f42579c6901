def test_three_nodes_converge(cluster):
    a, b, c = cluster.start(3, in_memory=True)
    for i in range(30):
        assert [a, b, c][i % 3].incr().status_code == 200
    assert cluster.wait_converged([a, b, c], 30) == 30
