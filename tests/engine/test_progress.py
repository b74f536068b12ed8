"""The live progress of a pipeline (issue 13 point 6): exact counts per piper, drawn
with rich to a console that is not a terminal (a string), with names and counts."""

from __future__ import annotations

import io

from rich.console import Console

from papycluster import NuMap, Piper, Plumber
from papycluster.engine import progress


def double(inbox):
    return inbox[0] * 2


def fail_on_seven(inbox):
    if inbox[0] == 14:
        raise ValueError("fourteen")
    return inbox[0] + 1


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def frames(text: str) -> list[dict[str, list[str]]]:
    """Each table drawn: piper name -> its cells (done, items/s, errors, runs on)."""
    drawn = []
    for frame in text.split("┃ piper")[1:]:
        rows = {}
        for line in frame.splitlines():
            cells = [c.strip() for c in line.split("│")[1:-1]]
            if len(cells) == 5:
                rows[cells[0].split()[0]] = cells[1:]
        drawn.append(rows)
    return drawn


def pipeline(**kwargs):
    first = Piper(double, parallel=NuMap(worker_num=2), name="doubler")
    second = Piper(fail_on_seven, parallel=NuMap(worker_type="thread", worker_num=2),
                   name="incrementer")
    third = Piper(double, name="inline_one")
    plumber = Plumber(pipes=[(first, second, third)], **kwargs)
    return plumber, (first, second, third)


def test_counts_are_exact_and_the_table_shows_them():
    screen, out = console()
    plumber, (first, second, third) = pipeline(progress=screen)
    plumber.start([range(100)])
    plumber.run()
    assert plumber.wait(60)
    plumber.stop()
    assert (first.progress.done, first.progress.errors) == (100, 0)
    # the error item made by the second piper passes the third as an error item
    assert (second.progress.done, second.progress.errors) == (100, 1)
    assert (third.progress.done, third.progress.errors) == (100, 1)
    last = frames(out.getvalue())[-1]
    assert last["doubler"][0] == "100" and last["doubler"][2] == "0"
    assert last["incrementer"][0] == "100" and last["incrementer"][2] == "1"
    assert last["inline_one"][0] == "100" and last["inline_one"][2] == "1"
    assert last["doubler"][3] == "2 local processes"
    assert last["incrementer"][3] == "2 local threads"
    assert last["inline_one"][3].startswith("inline")
    assert float(last["doubler"][1].replace(",", "")) > 0  # items/s


def test_the_display_refreshes_while_the_pipeline_runs():
    """Frames are drawn while it runs, with counts that rise."""
    screen, out = console()
    slow = Piper(_slow, parallel=NuMap(worker_type="thread", worker_num=2), name="slow")
    plumber = Plumber(pipes=[(slow,)])
    plumber.start([range(100)], progress=screen)  # about 1 s: a few refreshes
    plumber.run()
    assert plumber.wait(60)
    plumber.stop()
    done = [int(frame["slow"][0]) for frame in frames(out.getvalue()) if "slow" in frame]
    assert done[0] == 0 and done[-1] == 100 and done == sorted(done), done
    assert any(0 < n < 100 for n in done), done  # drawn while it ran
    assert slow.progress.done == 100


def _slow(inbox):
    import time

    time.sleep(0.02)
    return inbox[0]


def test_off_by_default_when_stdout_is_not_a_terminal(capsys):
    plumber, pipers = pipeline()
    assert not progress.wanted(None)  # pytest captures stdout: not a terminal
    plumber.start([range(10)])
    plumber.run()
    assert plumber.wait(60)
    plumber.stop()
    assert "doubler" not in capsys.readouterr().out
    assert pipers[0].progress.done == 10  # counted all the same


def test_render_names_remote_hosts_and_who_answered():
    numap = NuMap(worker_num=0, worker_remote=[("node1", 2), ("node2", 1)])
    piper = Piper(double, parallel=numap, name="remote_piper")
    for source in ["node1"] * 3 + ["node2"]:
        piper.progress.count(False, source)
    piper.progress.count(True, "node2")
    screen, out = console()
    screen.print(progress.render([piper]))
    text = out.getvalue()
    assert "remote_piper" in text and "node1 x2" in text and "node2 x1" in text
    assert "node1: 3" in text and "node2: 2" in text
    row = frames(text)[-1]["remote_piper"]
    assert row[0] == "5" and row[2] == "1"
