"""Readers and the loader: malformed lines reported with line numbers, text files, host shards, and
exact resume (with and without the prefetch thread) in every packing mode."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lwm_core.data import DataLoader, RecordProcessor, RecordReader, VisionSpec
from lwm_core.errors import LWMError


class WordTokenizer:
    bos_id, eos_id = 1, 2

    def encode(self, text):
        return [3 + ord(w[0]) % 90 for w in text.split()]


def processor(fields="text", **kwargs):
    return RecordProcessor(WordTokenizer(), fields, vision=VisionSpec(tokens_per_frame=2, num_codes=16), **kwargs)


def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return path


MESSY = ['{"text": "a"}\n', '{bad\n', '{"text": "b"}\n', '[1, 2]\n', '\n', '{"text": "a b"}\n', b'\xff\xfe\n',
         '{"text": "c"}']  # no newline at the end


def test_malformed_lines_are_counted_reported_and_skipped(tmp_path, caplog):
    path = write_lines(tmp_path / "data.jsonl", MESSY)
    reader = RecordReader(path)
    with caplog.at_level(logging.WARNING, logger="lwm.data"):
        texts = [r.data["text"] for r in reader]
    assert texts == ["a", "b", "a b", "c"]
    c = reader.report.counts
    assert (c["records"], c["malformed_lines"], c["blank_lines"]) == (4, 3, 1)
    assert [p[1] for p in reader.report.problems] == [f"{path}:2", f"{path}:4", f"{path}:7"]
    summary = reader.report.summary()
    assert "3 malformed lines" in summary and f"{path}:4: malformed line: a JSON list, not an object" in summary
    assert f"{path}:7" in caplog.text  # logged as it happens, too


def test_loader_reports_malformed_and_bad_records(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", MESSY + ['\n{"other": "x"}\n'])
    loader = DataLoader(path, processor(), batch_size=5, seq_length=8, packing="pad")
    batch = next(loader)
    assert batch["input_ids"][:, :2].tolist() == [[1, 10], [1, 11], [1, 10], [1, 12], [0, 0]]  # a, b, a b, c
    assert loader.stats["malformed_lines"] == 3 and loader.stats["bad_records"] == 1
    assert f"{path}:9: bad record: no key 'text'" in loader.summary()
    assert f"{path}:7: malformed line: not UTF-8" in loader.summary()
    with pytest.raises(LWMError, match=r"data.jsonl:9: no key 'text'"):
        list(DataLoader(path, processor(), batch_size=4, seq_length=8, strict=True))
    wrong = write_lines(tmp_path / "wrong.jsonl", ['{"other": "x"}\n'] * 100)
    with pytest.raises(LWMError, match="first 100 records could not be built"):
        next(DataLoader(wrong, processor(), batch_size=1, seq_length=8))


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_pass_with_no_usable_record_stops_instead_of_looping(tmp_path, shuffle):
    path = write_lines(tmp_path / "data.jsonl", ["{bad\n", "\n", "[1]\n"])
    assert list(RecordReader(path, epochs=1, shuffle=shuffle)) == []  # one pass: just ends
    with pytest.raises(LWMError, match=r"no usable record in a whole pass over .*data.jsonl \(this host's lines\): "
                                       r"0 records read; 2 malformed lines"):
        list(RecordReader(path, epochs=None, shuffle=shuffle))
    # a resumed pass that starts mid-epoch may find nothing in its rest: that is no reason to stop
    good = write_lines(tmp_path / "good.jsonl", ['{"text": "a"}\n', "{bad\n"])
    reader = RecordReader(good, epochs=3, shuffle=shuffle)
    records = iter(reader)
    next(records)
    resumed = RecordReader(good, epochs=3, shuffle=shuffle)
    resumed.seek(reader.position())
    assert len(list(resumed)) == 2  # the two later epochs


def test_text_files_are_one_document_each(tmp_path):
    (tmp_path / "b.txt").write_text("b b\n\nsecond paragraph")
    (tmp_path / "a.txt").write_text("a")
    write_lines(tmp_path / "c.jsonl", ['{"text": "c"}\n'])
    (tmp_path / "notes.md").write_text("ignored: not a data suffix")
    records = list(RecordReader(tmp_path))
    assert [r.data["text"] for r in records] == ["a", "b b\n\nsecond paragraph", "c"]
    assert [r.line for r in records] == [0, 1, 2]
    with pytest.raises(LWMError, match="no data files"):
        RecordReader(tmp_path / "missing*.jsonl")


def test_shards_take_line_i_mod_count(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps({"text": str(i)}) + "\n" if i != 5 else "{bad\n"
                                                 for i in range(11)])
    shards = [RecordReader(path, shard_index=k, shard_count=3) for k in range(3)]
    got = [[int(r.data["text"]) for r in s] for s in shards]
    assert got == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 8]]  # line 5 (shard 2's) is malformed
    assert [s.report.counts["malformed_lines"] for s in shards] == [0, 0, 1]
    with pytest.raises(LWMError):
        RecordReader(path, shard_index=3, shard_count=3)


def test_shuffled_reader_visits_each_owned_line_once_an_epoch_in_a_seeded_order(tmp_path):
    write_lines(tmp_path / "a.jsonl", [json.dumps({"text": str(i)}) + "\n" if i != 5 else "{bad\n" for i in range(20)])
    (tmp_path / "b.txt").write_text("20")
    write_lines(tmp_path / "c.jsonl", ["\n"] + [json.dumps({"text": str(i)}) + "\n" for i in range(21, 30)])
    files = [tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "c.jsonl"]

    def epochs(**kw):
        reader = RecordReader(files, epochs=3, **kw)
        out = [[] for _ in range(3)]
        for rec in reader:
            out[rec.ref[0]].append(int(rec.data["text"]))
        return out, reader.report.counts

    in_order, counts = epochs()
    shuffled, shuffled_counts = epochs(shuffle=True, seed=7)
    assert shuffled_counts == counts  # the same records read, malformed and blank lines counted
    for got in shuffled:
        assert sorted(got) == sorted(in_order[0]) == [i for i in range(30) if i != 5]
        assert got != in_order[0]
    assert shuffled[0] != shuffled[1] != shuffled[2]  # a new order every epoch
    assert epochs(shuffle=True, seed=7)[0] == shuffled and epochs(shuffle=True, seed=8)[0] != shuffled
    # a host owns the same lines as without shuffling, in a shuffled order
    for k in range(3):
        plain = [int(r.data["text"]) for r in RecordReader(files, shard_index=k, shard_count=3)]
        mixed = [int(r.data["text"]) for r in RecordReader(files, shard_index=k, shard_count=3, shuffle=True)]
        assert sorted(mixed) == sorted(plain) and mixed != plain
    # the position is (epoch, place, -1, -1, -1): a reader sought there goes on identically
    reader = RecordReader(files, epochs=2, shuffle=True, seed=7)
    records = iter(reader)
    head = [next(records).data["text"] for _ in range(35)]
    resumed = RecordReader(files, epochs=2, shuffle=True, seed=7)
    resumed.seek(reader.position())
    assert reader.position()[0] == 1 and reader.position()[2:] == [-1, -1, -1]
    assert head + [r.data["text"] for r in resumed] == [str(x) for x in shuffled[0] + shuffled[1]]
    with pytest.raises(LWMError, match="not a shuffled reader position"):
        resumed.seek([0, 0, 0, 0, 0])
    with pytest.raises(LWMError, match="not a reader position"):
        RecordReader(files).seek(reader.position())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three files (two jsonl, one txt) of records of 1..40 words: some longer than a row, some
    bracketed (no loss), some with vision codes, a few malformed."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta eps zeta eta theta iota kappa".split()

    def record(i):
        n = int(rng.integers(1, 41)) if i % 7 else int(rng.integers(1, 4))
        text = " ".join(rng.choice(words, n))
        if i % 11 == 3:
            return "{broken\n"
        if i % 5 == 0:
            return json.dumps({"q": text, "a": " ".join(rng.choice(words, 3)), "fields": "[q],a"}) + "\n"
        if i % 6 == 0:  # 1..4 frames of 2 codes; one of two field orders per line
            codes = rng.integers(0, 16, 2 * int(rng.integers(1, 5))).tolist()
            return json.dumps({"text": text, "vision": codes, "fields": ["[text],vision", "[vision],text"]}) + "\n"
        return json.dumps({"text": text, "fields": "text"}) + "\n"

    write_lines(root / "a.jsonl", [record(i) for i in range(40)])
    (root / "b.txt").write_text(" ".join(rng.choice(words, 25)))
    write_lines(root / "c.jsonl", [record(i) for i in range(40, 70)])
    return root


def make(dataset, prefetch=0, **kwargs):
    options = dict(batch_size=3, seq_length=16, open_rows=2, epochs=2) | kwargs
    # records name their fields; the text file has none and gets the configured "text"
    return DataLoader(dataset, processor("text", fields_from_example="fields", swap_prob=0.5, max_n_frames=3),
                      prefetch=prefetch, **options)


def assert_same(batches, expected):
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected, strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("mode", [dict(packing="masked"), dict(packing="pad", overflow="split"),
                                  dict(packing="concat"), dict(packing="masked", overflow="truncate"),
                                  dict(packing="masked", shuffle=True)])
def test_restore_continues_exactly(dataset, mode):
    full_loader = make(dataset, **mode)
    full = list(full_loader)
    final_stats = full_loader.stats
    assert len(full) > 10 and final_stats["malformed_lines"] == 14 and final_stats["bad_records"] == 0
    if mode.get("overflow", "split") == "split" and mode["packing"] != "concat":
        assert final_stats["split"] > 0
    for k, prefetch in ((0, 0), (1, 2), (4, 0), (len(full) // 2, 3), (len(full) - 1, 0)):
        first = make(dataset, prefetch=prefetch, **mode)
        head = [next(first) for _ in range(k)]
        state = json.loads(json.dumps(first.state()))
        first.close()
        assert len(json.dumps(state)) < 20_000  # references, not tokens
        resumed = make(dataset, prefetch=prefetch, **mode)
        resumed.restore(state)
        rest = list(resumed)
        assert_same(head + rest, full)
        assert resumed.stats == final_stats


def test_prefetch_close_and_rewind_lose_nothing(dataset):
    full = list(make(dataset))
    loader = make(dataset, prefetch=4)
    got = [next(loader) for _ in range(3)]
    loader.close()  # drops what the thread built ahead; continues from batch 3
    got += [next(loader) for _ in range(2)]
    at_five = loader.state()
    got += list(loader)
    assert_same(got, full)
    loader.restore(at_five)  # rewinding works too
    assert_same(list(loader), full[5:])


def test_prefetch_hands_errors_to_the_consumer(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", ['{"text": "a"}\n', '{"other": "x"}\n'])
    loader = DataLoader(path, processor(), batch_size=1, seq_length=8, packing="pad", strict=True, prefetch=2)
    assert next(loader)["input_ids"][0, :3].tolist() == [1, 10, 2]
    with pytest.raises(LWMError, match="data.jsonl:2"):
        next(loader)
    loader.close()


def test_restore_refuses_another_setup(dataset):
    state = make(dataset).state()
    for other in (dict(seq_length=32), dict(packing="pad"), dict(batch_size=2), dict(shuffle=True)):
        with pytest.raises(LWMError, match="saved data state"):
            make(dataset, **other).restore(state)
    with pytest.raises(LWMError, match="saved data state has shuffle"):
        make(dataset).restore(make(dataset, shuffle=True).state())
    older = {k: v for k, v in state.items() if k != "shuffle"}  # saved before --shuffle existed
    make(dataset).restore(older)
    with pytest.raises(LWMError, match="not a data loader state"):
        make(dataset).restore({"reader": [0, 0, 0, 0, 0]})


def test_shuffle_changes_the_order_of_the_examples_not_the_examples(dataset):
    def tokens(loader):
        return [row[mask].tolist() for b in loader for row, mask in zip(b["input_ids"], b["attention_mask"],
                                                                        strict=True) if mask.any()]

    plain, mixed = tokens(make(dataset, packing="pad", epochs=1)), tokens(make(dataset, packing="pad", epochs=1,
                                                                                   shuffle=True))
    assert mixed != plain and len(plain) > 20
    # one example (or one piece of a long one) a row, each built from its own (seed, epoch, line)
    assert sorted(map(tuple, mixed)) == sorted(map(tuple, plain))
