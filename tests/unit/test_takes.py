"""Take folders and metadata: plain Python."""

from __future__ import annotations

from helpers import load

takes = load("core.takes")


def make_info(**overrides):
    values = dict(
        shot="A", take="001", prompt="p", style_prompt="s", negative_prompt="n", seed=1,
        models={"base": "m"}, settings={"steps": 4}, control_hash="c", request_hash="r", frames_total=[1, 2],
    )
    values.update(overrides)
    return takes.TakeInfo(**values)


def test_take_dirs_are_numbered_and_never_reused(tmp_path):
    first = takes.new_take_dir(tmp_path)
    second = takes.new_take_dir(tmp_path)
    assert (first.name, second.name) == ("001", "002")


def test_take_json_round_trip(tmp_path):
    info = make_info(frames_done=[1])
    takes.write_take(tmp_path, info)
    assert takes.read_take(tmp_path) == info
    assert takes.read_take(tmp_path / "missing") is None


def test_complete_take_is_found_only_with_all_frames_on_disk(tmp_path):
    folder = takes.new_take_dir(tmp_path)
    takes.write_take(folder, make_info(complete=True, frames_done=[1, 2]))
    (folder / "0001.png").write_bytes(b"x")
    assert takes.find_complete_take(tmp_path, "r") is None
    (folder / "0002.png").write_bytes(b"x")
    assert takes.find_complete_take(tmp_path, "r")[0] == folder
    assert takes.find_complete_take(tmp_path, "other") is None


def test_resumable_take_is_the_unfinished_one(tmp_path):
    folder = takes.new_take_dir(tmp_path)
    takes.write_take(folder, make_info(cancelled=True, frames_done=[1]))
    assert takes.find_resumable_take(tmp_path, "r")[0] == folder


def test_request_hash_depends_on_every_part():
    base = takes.request_hash("c", {"m": 1}, {"p": "a"}, {"s": 1})
    assert base == takes.request_hash("c", {"m": 1}, {"p": "a"}, {"s": 1})
    assert len({base, takes.request_hash("d", {"m": 1}, {"p": "a"}, {"s": 1}),
                takes.request_hash("c", {"m": 2}, {"p": "a"}, {"s": 1}),
                takes.request_hash("c", {"m": 1}, {"p": "b"}, {"s": 1}),
                takes.request_hash("c", {"m": 1}, {"p": "a"}, {"s": 2})}) == 5
