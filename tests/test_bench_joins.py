from benchmarks.bench_joins import main


def test_a_join_is_timed_with_and_without_packing_and_gives_the_same_output(capsys):
    main(["--records", "2000", "--labels", "200", "--repeat", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    rows = {line.split("|")[1].strip(): line for line in out if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"variant", "none", "plain", "packed"}
    assert out[-1].startswith("same output: True [(")
    count = int(out[-1].split("[(")[1].split(",")[0])
    assert 0 < count < 2000  # the pairs whose first id has a label (every 10th has none)
