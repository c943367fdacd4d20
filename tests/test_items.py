"""The data-block API: files, splitters, labellers, Vocab."""

import re
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from fitvision.data.items import (
    Vocab, func_labeller, func_splitter, get_files, grandparent_splitter, index_splitter, parent_labeller,
    random_splitter, regex_labeller, split_items,
)
from fitvision.errors import FitVisionError


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_get_files_filters_sorts_and_skips_hidden(tmp_path):
    _touch(tmp_path, "train/dog/b.JPG", "train/dog/a.png", "train/cat/c.jpeg", "train/cat/notes.txt",
           "train/.hidden/d.jpg", "train/cat/.e.jpg", "valid/cat/f.jpg", "top.jpg")
    rel = [p.relative_to(tmp_path).as_posix() for p in get_files(tmp_path)]
    assert rel == ["top.jpg", "train/cat/c.jpeg", "train/dog/a.png", "train/dog/b.JPG", "valid/cat/f.jpg"]
    assert [p.name for p in get_files(tmp_path, recurse=False)] == ["top.jpg"]
    only_train = get_files(tmp_path, include=["train"])
    assert [p.name for p in only_train] == ["top.jpg", "c.jpeg", "a.png", "b.JPG"]  # files at the top stay
    assert [p.name for p in get_files(tmp_path / "train/cat", extensions=[".TXT"])] == ["notes.txt"]
    assert [p.name for p in get_files(tmp_path / "train/dog", extensions=["png"])] == ["a.png"]  # no dot: the same
    assert [p.name for p in get_files(tmp_path / "train/dog", extensions=".jpg")] == ["b.JPG"]  # one string
    with pytest.raises(FitVisionError, match="not a folder"):
        get_files(tmp_path / "missing")


def test_grandparent_splitter_and_parent_labeller():
    items = [PurePosixPath(p) for p in
             ["train/cat/1.jpg", "val/dog/2.jpg", "train/dog/3.jpg", "other/cat/4.jpg", "val/cat/5.jpg"]]
    train, valid = split_items(items, grandparent_splitter(valid_name=("valid", "val")))
    assert [str(p) for p in train] == ["train/cat/1.jpg", "train/dog/3.jpg"]
    assert [str(p) for p in valid] == ["val/dog/2.jpg", "val/cat/5.jpg"]  # "other/" left out
    assert [parent_labeller(p) for p in valid] == ["dog", "cat"]


def test_random_splitter_is_seeded_and_exact():
    items = list(range(100))
    train, valid = split_items(items, random_splitter(0.2, seed=3))
    assert len(valid) == 20 and len(train) == 80
    assert sorted(train + valid) == items
    again = split_items(items, random_splitter(0.2, seed=3))
    other = split_items(items, random_splitter(0.2, seed=4))
    assert again == (train, valid)
    assert other[1] != valid
    # the documented rule: a default_rng(seed) permutation, the first round(n*pct) are valid
    assert valid == sorted(np.random.default_rng(3).permutation(100)[:20].tolist())
    with pytest.raises(FitVisionError, match=r"valid_pct must be in \[0, 1\), got 1.5"):
        random_splitter(1.5)


def test_index_and_func_splitters():
    items = list("abcdef")
    assert split_items(items, index_splitter([4, 1])) == (list("acdf"), list("be"))
    with pytest.raises(FitVisionError, match="validation index out of range for 6 items"):
        index_splitter([6])(items)
    vowels = func_splitter(lambda c: True if c in "ae" else (None if c == "f" else False))
    assert split_items(items, vowels) == (list("bcd"), list("ae"))
    # numpy bools (a DataFrame's is_valid column) and 1/0 split the same way, not leave items out
    flags = np.array([c in "ae" for c in items])
    assert split_items(items, func_splitter(lambda c: flags["abcdef".index(c)])) == (list("bcdf"), list("ae"))
    assert split_items(items, func_splitter(lambda c: int(c in "ae"))) == (list("bcdf"), list("ae"))


def test_regex_and_func_labellers():
    label = regex_labeller(r"^(.+)_\d+\.jpg$")
    assert label(PurePosixPath("pets/great_pyrenees_12.jpg")) == "great_pyrenees"
    with pytest.raises(FitVisionError, match=r"does not match file name 'x.png'"):
        label(PurePosixPath("x.png"))
    with pytest.raises(FitVisionError, match="needs a pattern with one group"):
        regex_labeller(r"\d+")
    assert func_labeller(lambda p: len(p.name))(PurePosixPath("a/abc")) == "3"


def test_labellers_refuse_what_would_be_a_none_label():
    # before: re.error out of re.compile; a "None" label; a class named "None"
    with pytest.raises(FitVisionError, match=r"^regex_labeller: bad pattern '\(\[' \(.+ at position \d+\)$"):
        regex_labeller("([")
    optional_pattern = r"^([a-z]+_)?\d+\.jpg$"
    optional = regex_labeller(optional_pattern)
    assert optional(PurePosixPath("cat_1.jpg")) == "cat_"
    expected = f"regex {optional_pattern!r} does not match file name '2.jpg' with its first group"
    with pytest.raises(FitVisionError, match="^" + re.escape(expected) + "$"):
        optional(PurePosixPath("2.jpg"))
    label = func_labeller(lambda p: {"a.jpg": "cat"}.get(p.name))
    assert label(PurePosixPath("x/a.jpg")) == "cat"
    with pytest.raises(FitVisionError, match=r"^the labelling function returned None for 'x/b\.jpg'; leave such "
                                             r"files out before labelling \(e\.g\. with func_splitter returning None\)$"):
        label(PurePosixPath("x/b.jpg"))


def test_vocab_built_on_train_applied_to_valid():
    vocab = Vocab(["dog", "cat", "dog", "bird"])
    assert vocab.classes == ["bird", "cat", "dog"]
    codes = vocab.encode(["cat", "dog", "bird"])
    assert codes.dtype == np.int64 and codes.tolist() == [1, 2, 0]
    assert vocab.decode(codes) == ["cat", "dog", "bird"]
    with pytest.raises(FitVisionError, match=r"^label 'fish' is not among the training classes \(3 classes: "
                                             r"bird, cat, dog\)"):
        vocab.encode(["cat", "fish"])
    open_vocab = Vocab(["dog", "cat"], unknown=True)
    assert open_vocab.classes == ["cat", "dog", "unknown"]
    assert open_vocab.encode(["fish", "dog"]).tolist() == [2, 1]
    # a training label that is itself "unknown" is that same last class, not sorted in the middle
    assert Vocab(["a", "zebra", "unknown"], unknown=True).classes == ["a", "zebra", "unknown"]


def test_vocab_refuses_mixed_labels_and_out_of_range_indices():
    # before: TypeError "'<' not supported between instances of 'float' and 'str'"; IndexError; -1 -> "dog"
    with pytest.raises(FitVisionError, match=r"^labels of different kinds cannot be sorted into classes \(float, str\); "
                                             r"make every label a string \(a missing one reads as NaN or None\)$"):
        Vocab(["cat", float("nan"), "dog"])
    assert Vocab([3, 1, 3]).classes == [1, 3]  # one kind, numbers: still fine
    vocab = Vocab(["cat", "dog"])
    for bad in (2, -1):
        with pytest.raises(FitVisionError, match=rf"^class index {bad} is out of range for 2 classes$"):
            vocab.decode([0, bad])
    assert vocab.decode(np.array([1, 0])) == ["dog", "cat"]


def test_vocab_refuses_one_string_for_a_list_of_labels():
    # before: Vocab("cat").classes == ["a", "c", "t"], and encode("cat") encoded three letters
    with pytest.raises(FitVisionError, match=r"""^expected a list of labels, got the single string 'cat' \(write \['cat'\]\)$"""):
        Vocab("cat")
    with pytest.raises(FitVisionError, match=r"^expected a list of labels, got the single string 'dog'"):
        Vocab(["cat", "dog"]).encode("dog")
    assert Vocab(("cat", "dog")).encode(iter(["dog"])).tolist() == [1]  # any other iterable of labels is fine


def test_custom_dataset_in_a_few_lines(tmp_path):
    _touch(tmp_path, "pets/beagle_1.jpg", "pets/beagle_2.jpg", "pets/pug_1.jpg", "pets/pug_2.jpg", "pets/pug_3.jpg")
    files = get_files(tmp_path / "pets")
    train, valid = split_items(files, random_splitter(0.4, seed=0))
    label = regex_labeller(r"^(.+)_\d+\.jpg$")
    vocab = Vocab([label(f) for f in train])
    assert len(train) == 3 and len(valid) == 2
    assert set(vocab.decode(vocab.encode([label(f) for f in train]))) <= {"beagle", "pug"}


def test_get_files_follows_symlinked_folders_without_looping(tmp_path):
    _touch(tmp_path / "elsewhere", "dogs/a.jpg", "dogs/b.jpg")
    _touch(tmp_path / "data", "cat/c.jpg")
    (tmp_path / "data" / "dog").symlink_to(tmp_path / "elsewhere" / "dogs")  # a class folder linked in
    (tmp_path / "data" / "cat" / "up").symlink_to(tmp_path / "data")  # a link back up its own path
    rel = [p.relative_to(tmp_path / "data").as_posix() for p in get_files(tmp_path / "data")]
    assert rel == ["cat/c.jpg", "dog/a.jpg", "dog/b.jpg"]  # before the fix: the dog images were left out
