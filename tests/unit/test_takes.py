"""Take folders and metadata: plain Python."""

from __future__ import annotations

from helpers import load

takes = load("core.timeline.takes")


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


def test_take_json_with_wrong_types_is_ignored_not_raised(tmp_path):
    import json

    folder = takes.new_take_dir(tmp_path)
    for bad in ({"complete": "yes"}, {"frames_total": "1-3"}, {"frames_done": [1, "2"]}, {"seed": True},
                {"request_hash": 7}, [1, 2], "text"):
        data = bad if not isinstance(bad, dict) else {**json.loads(json.dumps(make_info().__dict__)), **bad}
        (folder / "take.json").write_text(json.dumps(data))
        assert takes.read_take(folder) is None, bad
        assert takes.list_takes(tmp_path) == []
        assert takes.find_resumable_take(tmp_path, "r") is None


def test_take_folders_are_ascii_numbers_sorted_by_value(tmp_path):
    paths = load("core.timeline.paths")
    for name in ("998", "999", "1000", "1001"):
        (tmp_path / name).mkdir()
        takes.write_take(tmp_path / name, make_info(take=name))
    (tmp_path / "\u0661\u0662\u0663\u0664").mkdir()  # Arabic-Indic digits: str.isdigit() is True
    (tmp_path / "\u0661\u0662\u0663\u0664" / "take.json").write_text("{}")
    assert [f.name for f, _ in takes.list_takes(tmp_path)] == ["998", "999", "1000", "1001"]
    assert paths.next_take_index(tmp_path) == 1002
    assert takes.new_take_dir(tmp_path).name == "1002"
    # The newest unfinished take is the highest number, not the last string ("999" > "1001").
    assert takes.find_resumable_take(tmp_path, "r")[0].name == "1001"


def test_frame_check_catches_truncated_empty_and_flipped_pngs(tmp_path):
    import struct
    import zlib

    check = load("core.client.frame_check")
    raw = b"".join(b"\0" + bytes(range(48)) for _ in range(16))  # 16 rows of 16 RGB pixels

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path = tmp_path / "f.png"
    path.write_bytes(png)
    assert check.png_problem(path) is None
    for damaged in (b"", png[: len(png) // 2], png[:-12], png[:40] + bytes([png[40] ^ 1]) + png[41:]):
        path.write_bytes(damaged)
        assert check.png_problem(path) is not None, len(damaged)
    assert check.png_problem(tmp_path / "missing.png").startswith("unreadable")


def test_take_tiers_also_of_files_written_before_generation_tiers(tmp_path):
    """draft/final/finalized as written now; "" (a generated take) and "final" with a source take (Finalize
    Take before issue 15) as older take.json files have them; a tier of the wrong type is refused."""
    assert takes.take_tier(make_info(tier="draft")) == "draft"
    assert takes.take_tier(make_info(tier="final")) == "final"
    assert takes.take_tier(make_info(tier="finalized")) == "finalized"
    assert takes.take_tier(make_info(tier="")) == "final"
    old_finalize = make_info(tier="final", settings={"source_take": "001", "finalize": {"upscaler": None}})
    assert takes.take_tier(old_finalize) == "finalized"
    assert takes.take_tier(None) == ""
    takes.write_take(tmp_path, make_info(tier="draft"))
    assert takes.take_tier(takes.read_take(tmp_path)) == "draft"
    (tmp_path / "take.json").write_text((tmp_path / "take.json").read_text().replace('"tier": "draft"', '"tier": 3'))
    assert takes.read_take(tmp_path) is None
