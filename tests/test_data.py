"""The emoji dataset builder on small fake npm tarballs laid out like emoji-datasource-{twitter,google}
(package/emoji.json + package/img/<set>/64/*.png with alpha) and @lobehub/fluent-emoji-flat
(package/assets/*.svg), and the ImageFolder reader."""

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edifice import data

# (unified code, category); six categories kept, Component dropped
EMOJI = [("1F600", "Smileys & Emotion"), ("1F602", "Smileys & Emotion"), ("1F436", "Animals & Nature"),
         ("1F431", "Animals & Nature"), ("1F1EB-1F1F7", "Flags"), ("1F1EF-1F1F5", "Flags"), ("1F34E", "Food & Drink"),
         ("1F697", "Travel & Places"), ("26BD", "Activities"), ("1F44B", "People & Body"),
         ("1F3FB", "Component"), ("1F3FC", "Component")]
SKIN = {"1F44B": ["1F44B-1F3FB", "1F44B-1F3FF"]}  # a waving hand with two skin-tone variants
SUBGROUP = {"1F436": "animal-mammal", "1F431": "animal-cat & co", "1F34E": "food-fruit"}  # else "other"
STYLE_RGB = {"twitter": (200, 30, 30), "google": (30, 30, 200)}


def png(style: str, palette: bool = False) -> bytes:
    """64x64 transparent image: an opaque square of the style's colour and a half-transparent black stripe."""
    a = np.zeros((64, 64, 4), np.uint8)
    a[16:48, 16:48] = (*STYLE_RGB[style], 255)
    a[0:8, :] = (0, 0, 0, 128)
    im = Image.fromarray(a, "RGBA")
    if palette:  # mode P with transparency, as some real files are
        im = im.convert("RGB").quantize(4)
        im.info["transparency"] = im.getpixel((63, 63))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_tarball(path: Path, files: dict[str, bytes]) -> Path:
    """A .tgz of ``files`` (archive name -> bytes), as npm pack writes one."""
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def fake_package(path: Path, style: str) -> Path:
    entries = []
    for code, cat in EMOJI:
        e = {"unified": code, "image": code.lower() + ".png", "category": cat, "short_name": f"e{code.lower()}",
             "name": None if code == "1F602" else f"EMOJI {code}",  # a name can be null: the short name stands in
             "subcategory": SUBGROUP.get(code, "other"), f"has_img_{style}": True}
        if code in SKIN:
            e["skin_variations"] = {v.split("-")[1]: {"unified": v, "image": v.lower() + ".png",
                                                      f"has_img_{style}": True} for v in SKIN[code]}
        entries.append(e)
    files = {"package/emoji.json": json.dumps(entries).encode(), "package/package.json": b"{}"}
    for e in entries:
        for name in [e["image"]] + [v["image"] for v in e.get("skin_variations", {}).values()]:
            files[f"package/img/{style}/64/{name}"] = png(style, palette=name.startswith("1f600"))
    files[f"package/img/{style}/32/1f600.png"] = png(style)  # other sizes are ignored
    return write_tarball(path, files)


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory):
    root = tmp_path_factory.mktemp("npm")
    return {s: fake_package(root / f"emoji-datasource-{s}-16.0.0.tgz", s) for s in data.EMOJI_STYLES}


@pytest.fixture(scope="module")
def built(tarballs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "emoji"
    return out, data.build_emoji(out, tarballs, heldout_fraction=0.4)


def files(out: Path) -> dict[str, list[Path]]:
    return {split: sorted((out / split).glob("*/*.png")) for split in ("train", "heldout")}


def test_split_is_by_emoji_and_both_sides_are_used(built):
    out, manifest = built
    side = {}
    for split, paths in files(out).items():
        assert paths, f"{split} is empty"
        for p in paths:
            style, code = p.stem.split("_", 1)
            base = code.split("-1f3f")[0]  # skin-tone variants belong to their base emoji
            side.setdefault(base, set()).add(split)
    assert all(len(s) == 1 for s in side.values()), side
    for code, _ in EMOJI:  # deterministic: the side is the hash rule's
        if not code.startswith("1F3F"):
            assert side[code.lower()] == {"heldout" if data.is_heldout(code, 0.4) else "train"}
    assert manifest["counts"]["train"]["emoji"] + manifest["counts"]["heldout"]["emoji"] == 10


def test_both_styles_component_dropped_skin_tones_left_out(built):
    out, manifest = built
    all_files = [p for paths in files(out).values() for p in paths]
    assert len(all_files) == 2 * 10
    assert Counter(p.stem.split("_")[0] for p in all_files) == {"twitter": 10, "google": 10}
    assert not any("1f3fb" in p.name or "1f3fc" in p.name for p in all_files)
    folders = {p.parent.name for p in all_files}
    assert "component" not in folders
    assert folders == {"smileys-emotion", "animals-nature", "flags", "food-drink", "travel-places", "activities",
                       "people-body"}
    assert [c["name"] for c in manifest["classes"]] == ["Activities", "Animals & Nature", "Flags", "Food & Drink",
                                                         "People & Body", "Smileys & Emotion", "Travel & Places"]


def test_images_composited_on_white(built):
    out, _ = built
    for p in [p for paths in files(out).values() for p in paths]:
        im = Image.open(p)
        assert im.mode == "RGB" and im.size == (64, 64)
        a = np.asarray(im).astype(int)
        assert (a[60, 60] == 255).all(), "transparent background must become white"
        assert (np.abs(a[32, 32] - STYLE_RGB[p.stem.split("_")[0]]) <= 2).all()
        if not p.stem.endswith("1f600"):  # the palette file has no partial alpha
            assert (np.abs(a[4, 32] - 127) <= 2).all(), "50% black on white is mid-grey"


def test_manifest_counts_match_the_files(built):
    out, manifest = built
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for split, paths in files(out).items():
        c = manifest["counts"][split]
        assert c["images"] == len(paths)
        assert c["by_style"] == {s: sum(p.stem.startswith(s + "_") for p in paths) for s in data.EMOJI_STYLES}
        on_disk = Counter((p.parent.name, p.stem.split("_")[0]) for p in paths)
        assert {(k, s): n for k, v in c["by_class"].items() for s, n in v.items() if n} == dict(on_disk)
    assert manifest["attribution"]["twitter"]["license"] == "CC-BY-4.0"
    assert manifest["attribution"]["google"]["license"] == "Apache-2.0"
    assert not (out.parent / "emoji.partial").exists()


def test_skin_tones_option_keeps_variants_with_their_emoji(tarballs, tmp_path):
    m = data.build_emoji(tmp_path / "e", tarballs, heldout_fraction=0.4, skin_tones=True)
    paths = [p for ps in files(tmp_path / "e").values() for p in ps]
    hands = [p for p in paths if p.stem.split("_")[1].startswith("1f44b")]
    assert len(hands) == 6 and len({p.parent.parent.name for p in hands}) == 1
    assert m["counts"]["train"]["images"] + m["counts"]["heldout"]["images"] == 24


def test_cli_with_tarballs_rebuilds_and_refuses_foreign_folders(tarballs, tmp_path, capsys):
    out = tmp_path / "emoji"
    argv = ["emoji", "--out", str(out), "--tarball-twitter", str(tarballs["twitter"]),
            "--tarball-google", str(tarballs["google"]), "--heldout", "0.4"]
    data.main(argv)
    data.main(argv)  # a previous build is replaced
    assert "train:" in capsys.readouterr().out
    assert (out / "manifest.json").is_file()
    foreign = tmp_path / "mine"
    (foreign / "x").mkdir(parents=True)
    with pytest.raises(SystemExit, match="not an emoji dataset"):
        data.main(["emoji", "--out", str(foreign), "--tarball-twitter", str(tarballs["twitter"]),
                   "--tarball-google", str(tarballs["google"])])
    assert (foreign / "x").is_dir()


FLUENT_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">'
              b'<rect x="8" y="8" width="16" height="16" fill="rgb(30,160,30)"/></svg>')


def fake_fluent(path: Path, skip: str = "1F436") -> Path:
    """Laid out like @lobehub/fluent-emoji-flat: package/assets/<unified, lower case>.svg, one emoji missing."""
    codes = [c for c, _ in EMOJI if c != skip] + SKIN["1F44B"]
    files = {"package/package.json": b"{}", **{f"package/assets/{c.lower()}.svg": FLUENT_SVG for c in codes}}
    return write_tarball(path, files)


def test_fluent_style_renders_its_svgs_with_the_same_labels_and_split(tarballs, tmp_path, capsys):
    fluent = fake_fluent(tmp_path / "lobehub-fluent-emoji-flat-1.1.0.tgz")
    m = data.build_emoji(tmp_path / "e3", {**tarballs, "fluent": fluent}, heldout_fraction=0.4)
    paths = [p for ps in files(tmp_path / "e3").values() for p in ps]
    drawn = {p.stem.split("_", 1)[1]: p for p in paths if p.stem.startswith("fluent_")}
    twitter = {p.stem.split("_", 1)[1]: p for p in paths if p.stem.startswith("twitter_")}
    assert len(drawn) == 9 and "1f436" not in drawn and m["missing_images"] == {"fluent": 1}
    for code, p in drawn.items():  # same class folder and same side of the split as the other art of the emoji
        assert p.parent == twitter[code].parent
        a = np.asarray(Image.open(p)).astype(int)
        assert a.shape == (64, 64, 3) and (a[60, 60] == 255).all() and (np.abs(a[32, 32] - (30, 160, 30)) <= 2).all()
    assert m["attribution"]["fluent"]["license"] == "MIT"
    assert m["sources"]["fluent"]["package"] == "@lobehub/fluent-emoji-flat"
    assert m["counts"]["train"]["by_style"]["fluent"] + m["counts"]["heldout"]["by_style"]["fluent"] == 9
    with pytest.raises(SystemExit, match="labels from an emoji-datasource"):
        data.build_emoji(tmp_path / "x", {"fluent": fluent})
    for bad in ("fluent", "twitter,apple", "twitter,twitter"):
        with pytest.raises(SystemExit):
            data.main(["emoji", "--out", str(tmp_path / "y"), "--styles", bad])
    assert "--styles" in capsys.readouterr().err and not (tmp_path / "y").exists()
    data.main(["emoji", "--out", str(tmp_path / "z"), "--styles", "twitter,fluent", "--heldout", "0.4",
               "--tarball-twitter", str(tarballs["twitter"]), "--tarball-fluent", str(fluent)])
    assert set(json.loads((tmp_path / "z" / "manifest.json").read_text())["sources"]) == {"twitter", "fluent"}


def test_subgroups_file_the_same_images_by_subgroup(built, tarballs, tmp_path):
    out, manifest = built
    m = data.build_emoji(tmp_path / "s", tarballs, heldout_fraction=0.4, label="subgroup")
    sub = files(tmp_path / "s")
    for split, paths in files(out).items():  # the same files; each in <category>.<subgroup>
        assert sorted(p.name for p in sub[split]) == sorted(p.name for p in paths)
        by_name = {p.name: p.parent.name for p in paths}
        for p in sub[split]:
            code = p.stem.split("_", 1)[1].upper()
            assert p.parent.name == by_name[p.name] + "." + data.slug(SUBGROUP.get(code, "other"))
    animals = [c for c in m["classes"] if c["group"] == "Animals & Nature"]
    assert [(c["folder"], c["name"]) for c in animals] == [("animals-nature.animal-cat-co", "animal-cat & co"),
                                                            ("animals-nature.animal-mammal", "animal-mammal")]
    # read back: folders are subclasses of the categories, weighted by their images
    ds = data.ImageFolder(tmp_path / "s" / "train", 32)
    plain = data.ImageFolder(out / "train", 32)
    assert ds.class_names == plain.class_names and len(ds) == len(plain)
    sc = ds.subclasses
    assert len(sc.names) == len(ds.folders) and sc.problem(ds.class_names, len(ds.folders)) is None
    for i, f in enumerate(ds.folders):
        assert ds.class_names[sc.classes[i]] == next(c["group"] for c in m["classes"] if c["folder"] == f)
        assert sc.weights[i] == sum(label == i for _, label in ds.samples)
    assert plain.subclasses is None


def test_emoji_labels_file_each_emoji_apart_under_its_subgroup(built, tarballs, tmp_path):
    """``--label emoji``: one folder per emoji (its art styles and skin tones) named by the emoji's name, read
    back as subclasses of the categories that remember their subgroups."""
    out, _ = built
    data.main(["emoji", "--out", str(tmp_path / "e"), "--label", "emoji", "--heldout", "0.4",
               *(a for s, t in tarballs.items() for a in (f"--tarball-{s}", str(t)))])
    m = json.loads((tmp_path / "e" / "manifest.json").read_text())
    emoji = files(tmp_path / "e")
    for split, paths in files(out).items():  # the same files; each in <category>.<subgroup>.<code>
        assert sorted(p.name for p in emoji[split]) == sorted(p.name for p in paths)
        by_name = {p.name: p.parent.name for p in paths}
        for p in emoji[split]:
            code = p.stem.split("_", 1)[1].upper()
            sub = data.slug(SUBGROUP.get(code, "other"))
            assert p.parent.name == f"{by_name[p.name]}.{sub}.{data.slug(code)}"
    entry = {c["folder"]: c for c in m["classes"]}
    assert entry["animals-nature.animal-cat-co.1f431"] == {
        "index": 1, "folder": "animals-nature.animal-cat-co.1f431", "name": "emoji 1f431",
        "group": "Animals & Nature", "subgroup": "animal-cat & co"}
    assert entry["smileys-emotion.other.1f602"]["name"] == "e1f602"
    assert len(entry) == len(EMOJI) - 2 and "emoji" in m["label"]
    for split in ("train", "heldout"):
        ds = data.ImageFolder(tmp_path / "e" / split, 32)
        plain = data.ImageFolder(out / split, 32)
        assert ds.class_names == plain.class_names and len(ds) == len(plain)
        assert ds.subclasses.names == tuple(entry[f]["name"] for f in ds.folders)
        assert ds.subgroups == tuple(entry[f]["subgroup"] for f in ds.folders)
        assert [ds.class_names[c] for c in ds.subclasses.classes] == [entry[f]["group"] for f in ds.folders]
        assert set(ds.subclasses.weights) == {2.0}  # both art styles of each emoji
    plain = data.ImageFolder(out / "train", 32)
    assert plain.subgroups == (None,) * len(plain.folders)
    with pytest.raises(SystemExit, match="choose from"):
        data.build_emoji(tmp_path / "x", tarballs, label="word")


def test_image_folder_reads_the_tree(built, tmp_path):
    out, manifest = built
    ds = data.ImageFolder(out / "train", 32)
    assert ds.class_names == [c["name"] for c in manifest["classes"] if c["folder"] in ds.folders]
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert -1 <= img.min() and img.max() <= 1 and img[:, 31, 31].eq(1).all()
    assert ds.folders[label] == ds.samples[0][0].parent.name
    # non-square images: shorter side resized, centre cropped
    (tmp_path / "c").mkdir()
    Image.new("RGB", (40, 20), (0, 255, 0)).save(tmp_path / "c" / "wide.jpg")
    ds = data.ImageFolder(tmp_path, 16)
    assert ds.class_names == ["c"] and ds[0][0].shape == (3, 16, 16)
