"""What a run shows: workers' Ticks, throttled, and the --quiet / --verbose lines."""

from pathlib import Path

from pipeline.core.optimize import Progress
from pipeline.run.ticks import Tick, Ticker
from pipeline.ui.progress import RunDisplay


def _progress(iteration: int) -> Progress:
    return Progress(2, 3, (8, 8), iteration, 50, 1.0 / iteration, 0.5, 0.25, 0.0)


def test_ticker_sends_each_jobs_first_tick_then_at_most_ten_a_second(tmp_path):
    sent: list[Tick] = []
    ticker = Ticker(sent.append, "cpu", tmp_path)
    for i in range(1, 51):
        ticker(tmp_path / "sub" / "a.png", _progress(i))
    ticker(tmp_path / "b.png", _progress(1))
    assert [(t.output, t.iteration) for t in sent] == [("sub/a.png", 1), ("b.png", 1)]
    assert sent[0].worker.startswith("cpu pid ") and str(sent[0]) == "sub/a.png scale 2/3 iteration 1/50 loss 1"


def _lines(tmp_path: Path, verbosity: str, capsys) -> tuple[list[str], list[str]]:
    log = tmp_path / f"{verbosity}.log"
    with RunDisplay(log, tty=False, verbosity=verbosity) as report:
        report.log("1 jobs from config.yaml")
        report.progress(Tick("cpu pid 7", "a.png", 1, 1, 3, 10, 0.5))
        report.log("finished: 1 run", always=True)
    shown = [line.split(" ", 2)[2] for line in capsys.readouterr().err.splitlines()]
    return shown, [line.split(" ", 2)[2] for line in log.read_text().splitlines()]


def test_quiet_shows_only_what_is_always_shown_and_verbose_each_tick(tmp_path, capsys):
    tick = "cpu pid 7: a.png scale 1/1 iteration 3/10 loss 0.5"
    assert _lines(tmp_path, "quiet", capsys) == (["finished: 1 run"], ["1 jobs from config.yaml", "finished: 1 run"])
    assert _lines(tmp_path, "normal", capsys)[0] == ["1 jobs from config.yaml", "finished: 1 run"]
    assert _lines(tmp_path, "verbose", capsys) == (["1 jobs from config.yaml", tick, "finished: 1 run"],) * 2
