"""Hostile inputs: one test per finding of issue 10, each named by what it proves.

audit runs as root on shared datasets and folders other people made. These tests feed it
what such folders and servers can hold and check that nothing is written or deleted outside
what audit owns, that `audit query` is read-only, that the workspace never says something
untrue, that the crawler stays on the public internet, and that resources stay bounded.
Network tests talk only to a server the test starts on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import build_workspace, encode, synthetic_image

from audit import hashes, images, metadata, optouts, pipeline, sql, training
from audit.cli import cli
from audit.errors import AuditError
from audit.optouts.crawl import HostLimiter, check_address, fetch
from audit.workspace import LOCK, Workspace

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "audit" / "data" / "sample"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_red_line(res, code: int = 1) -> str:
    """The result is exit `code` with a single `Error:` line and no traceback."""
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    assert "Traceback" not in res.output
    return lines[0]


def folder_of_images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i:03d}.png").write_bytes(encode(synthetic_image(i, size=48)))
        (folder / f"img{i:03d}.txt").write_text(f"caption {i}")
    return folder


@pytest.fixture
def hashed(make_workspace) -> Workspace:
    ws = make_workspace([encode(synthetic_image(i)) for i in range(6)])
    hashes.compute(ws.root, workers=1)
    return Workspace.open(ws.root)


# -- writes and deletes outside the workspace ---------------------------------------------------


def test_generate_deletes_only_its_own_images_inside_its_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "000000.png").write_text("keep me too")
    for listed in [str(victim), "../victim.txt", "generated/../../victim.txt", "notes.txt"]:
        out = tmp_path / f"out-{abs(hash(listed))}"
        (out / "generated").mkdir(parents=True)
        (out / "generated" / "000000.png").write_bytes(b"png")
        pq.write_table(
            pa.table({"file": ["generated/000000.png", listed]}), out / "generated.parquet"
        )
        with pytest.raises(AuditError, match="nothing was deleted"):
            training._clear_previous(out)
        assert (out / "generated" / "000000.png").exists()  # refused before deleting anything
    # a symlinked images folder leads out of --out: refused too
    out = tmp_path / "out-link"
    out.mkdir()
    (out / "generated").symlink_to(elsewhere)
    pq.write_table(pa.table({"file": ["generated/000000.png"]}), out / "generated.parquet")
    with pytest.raises(AuditError, match="nothing was deleted"):
        training._clear_previous(out)
    assert victim.read_text() == "keep me" and (elsewhere / "000000.png").exists()
    # its own earlier output is removed
    out = tmp_path / "out-own"
    (out / "generated").mkdir(parents=True)
    (out / "generated" / "000000.png").write_bytes(b"png")
    pq.write_table(pa.table({"file": ["generated/000000.png"]}), out / "generated.parquet")
    training._clear_previous(out)
    assert not out.exists() or not any(out.iterdir())
    # and through the command: a model folder with weights, an --out listing the victim
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    out = tmp_path / "out-cli"
    out.mkdir()
    pq.write_table(pa.table({"file": [str(victim)]}), out / "generated.parquet")
    assert "nothing was deleted" in one_red_line(run("generate", model, "--n", 1, "--out", out))
    assert victim.exists()


@pytest.fixture(scope="module")
def sample_ws(tmp_path_factory) -> Path:
    """The bundled sample, ingested and opt-out decided (what the README's query examples use)."""
    root = tmp_path_factory.mktemp("sample") / "sample"
    metadata.ingest(root, [SAMPLE / "shards"])
    optouts.compute(
        root,
        registry=sorted((SAMPLE / "optout").glob("registry-*")),
        cache=SAMPLE / "optout" / "cache",
    )
    return root


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT * FROM metadata) TO '{outside}'",
        "COPY (SELECT 1 AS x) TO '{ws}/metadata/part-00000.parquet' (FORMAT parquet)",
        "ATTACH '{outside}.db' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; SELECT 2",
        "SELECT * FROM read_text('/etc/shadow')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM glob('/root/**')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('{ws}/../elsewhere.parquet')",
        "SELECT * FROM '{ws}/../elsewhere.parquet'",
    ],
)
def test_query_refuses_writes_attach_install_and_reads_outside(sample_ws, tmp_path, statement):
    pq.write_table(pa.table({"x": [1]}), sample_ws.parent / "elsewhere.parquet")
    part = sample_ws / "metadata" / "part-00000.parquet"
    before = part.read_bytes()
    outside = tmp_path / "stolen.csv"
    sql_text = statement.format(outside=outside, ws=sample_ws)
    with pytest.raises(AuditError) as err:
        sql.query(sample_ws, sql_text)
    assert "\n" not in str(err.value) and re.match(r"(refused|audit query runs)", str(err.value))
    assert not outside.exists() and not Path(f"{outside}.db").exists()
    assert part.read_bytes() == before
    assert sql.status(sample_ws, verify=True)["stages"]["ingest"]["status"] == "done"
    line = one_red_line(run("query", sample_ws, sql_text))
    assert "refused" in line or "exactly one" in line


def test_query_output_cannot_replace_a_workspace_file(sample_ws):
    part = sample_ws / "metadata" / "part-00000.parquet"
    before = part.read_bytes()
    args = ["query", sample_ws, "SELECT 1 AS x", "--format", "parquet", "--output", part]
    assert "inside the workspace" in one_red_line(run(*args))
    assert part.read_bytes() == before


def test_a_stage_that_raised_releases_the_lock_when_its_run_is_dropped(hashed):
    import gc

    from audit import workspace

    def failing_stage() -> None:
        hashed.start_stage("boom", {})
        raise RuntimeError("the stage failed")

    with pytest.raises(RuntimeError):
        failing_stage()
    gc.collect()
    assert str(hashed.root.resolve()) not in workspace._HELD


def test_query_answers_every_readme_example(sample_ws):
    readme = (REPO / "README.md").read_text()
    examples = re.findall(r'audit query indexes/sample "(.*?)"((?: --format \w+)?)', readme, re.S)
    assert len(examples) >= 2
    for text, fmt in examples:
        statement = " ".join(text.split())
        assert sql.query(sample_ws, statement).num_columns >= 2, (
            statement
        )  # the sample has no errors
        res = run("query", sample_ws, statement, *fmt.split())
        assert res.exit_code == 0, res.output
    # the session's example prints a table: the same rows come back
    shown = re.search(r"\$ audit query indexes/sample \"(.*?)\"\n(.*?)\d+ row\(s\)", readme, re.S)
    assert shown is not None
    rows = {
        tuple(c.strip() for c in line.strip("│").split("│"))
        for line in shown.group(2).splitlines()
        if line.startswith("│")
    }
    got = sql.query(sample_ws, " ".join(shown.group(1).split())).to_pylist()
    assert {tuple(str(v) for v in r.values()) for r in got} == rows


def test_dataset_name_cannot_lead_reports_out_of_the_reports_folder(tmp_path, hashed):
    for name in ["../../escape", "/tmp/escape", "..", "a/b"]:
        with pytest.raises(AuditError, match="not a plain name"):
            metadata.ingest(tmp_path / f"ws{abs(hash(name))}", [SAMPLE / "shards"], dataset=name)
    # a manifest edited by hand cannot do it either: the report folder is never computed
    manifest = json.loads((hashed.root / "manifest.json").read_text())
    manifest["dataset"] = "../../escape"
    (hashed.root / "manifest.json").write_text(json.dumps(manifest))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert "not a plain name" in one_red_line(run("dedup", hashed.root))
    finally:
        os.chdir(cwd)
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()
    # nor a match name: its results go to WS/memorisation/<name>/
    with pytest.raises(AuditError, match="not a plain name"):
        pipeline.match(SAMPLE / "shards", against=hashed.root, name="../../escape")


def test_folder_source_does_not_follow_symlinks_out_of_the_root(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret")
    src = folder_of_images(tmp_path / "src", 2)
    (src / "img000.txt").unlink()
    (src / "img000.txt").symlink_to(secret)  # a caption sidecar pointing at /etc/passwd
    (src / "passwd.png").symlink_to(secret)
    (src / "linked").symlink_to(tmp_path)  # a folder link: not walked
    metadata.ingest(tmp_path / "ws", [src])
    table = sql.query(tmp_path / "ws", "SELECT * FROM metadata")
    text = json.dumps(table.to_pylist(), default=str)
    assert "the secret" not in text and str(secret) not in text
    assert table.num_rows == 2 and "passwd" not in text


# -- the workspace tells the truth ---------------------------------------------------------------


def test_workspace_lock_fails_fast_naming_the_other_process(hashed):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom audit.workspace import Workspace\n"
            "Workspace.open(sys.argv[1]).lock()\nprint('locked', flush=True)\ntime.sleep(60)",
            str(hashed.root),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(
            AuditError, match=rf"another audit is running on .* \(pid {holder.pid}\)"
        ):
            hashes.compute(hashed.root, workers=1, fast_decode=False)
        assert time.monotonic() - started < 5  # fails fast, does not wait
        line = one_red_line(run("hash", hashed.root, "--exact-decode", "--workers", 1))
        assert f"(pid {holder.pid})" in line
        # nothing was recorded by the refused runs: hash is still the fast-decode run, done
        assert Workspace.open(hashed.root).stage("hash")["params"]["fast_decode"] is True
        # a stage the other process left running is reported as running there
        other = Workspace.open(hashed.root)
        other.manifest["stages"]["embed"] = {"status": "running", "parts": {"0": {"outputs": []}}}
        assert f"lock (pid {holder.pid})" in other.status()["embed"]["why"]
    finally:
        holder.kill()
        holder.wait()
    hashes.compute(hashed.root, workers=1, fast_decode=False)  # free again once it is gone
    assert (hashed.root / LOCK).exists()
    assert "interrupted: no audit is running" in other.status()["embed"]["why"]


def test_two_workspace_objects_keep_each_others_records(hashed):
    a, b = Workspace.open(hashed.root), Workspace.open(hashed.root)
    run_a = a.start_stage("first", {"x": 1})
    b.start_stage("second", {"y": 2}).finish({"n": 2})
    run_a.finish({"n": 1})  # `a` read the manifest before `second` existed
    stages = Workspace.open(hashed.root).manifest["stages"]
    assert stages["first"]["status"] == stages["second"]["status"] == "done"
    assert stages["hash"]["status"] == "done"


def test_match_keeps_the_index_record(make_workspace, tmp_path):
    from audit import embeddings, experiments

    ws = make_workspace([encode(synthetic_image(i)) for i in range(8)])
    hashes.compute(ws.root, workers=1)
    embeddings.compute(ws.root, model="tiny", pretrained="none", workers=1)
    generated = folder_of_images(tmp_path / "gen", 2)
    experiments.match(generated, against=ws.root, name="g", report_dir=tmp_path / "rep", workers=1)
    stages = Workspace.open(ws.root).manifest["stages"]
    assert stages["index"]["status"] == "done"  # built through a second Workspace object
    assert stages["match-g"]["status"] == "done"
    assert sql.status(ws.root)["stages"]["index"]["status"] == "done"


def test_rerun_with_other_parts_leaves_no_stale_parts_behind_the_views(tmp_path):
    src = folder_of_images(tmp_path / "src", 12)
    root = tmp_path / "ws"
    metadata.ingest(root, [src], rows_per_part=4)
    hashes.compute(root, workers=1)
    assert len(list((root / "hashes").glob("part-*.parquet"))) == 3
    metadata.ingest(root, [src], rows_per_part=12)
    hashes.compute(root, workers=1)
    assert sorted(p.name for p in (root / "hashes").glob("part-*.parquet")) == [
        "part-00000.parquet"
    ]
    got = sql.query(root, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM hashes")
    assert got.to_pylist() == [{"n": 12, "ids": 12}]
    # a part file nobody recorded (left by hand, or by an old version) is not in the view
    pq.write_table(
        pq.read_table(root / "hashes" / "part-00000.parquet"),
        root / "hashes" / "part-00009.parquet",
    )
    assert sql.query(root, "SELECT count(*) AS n FROM hashes").to_pylist() == [{"n": 12}]
    assert sql.status(root, verify=True)["stages"]["hash"]["status"] == "done"


@pytest.mark.parametrize(
    "damage",
    [
        '{"schema_version": 1, "dataset": "x"}',
        "[1, 2, 3]",
        "{not json",
        '{"schema_version": 1, "stages": []}',
    ],
    ids=["no-stages", "json-list", "bad-json", "stages-not-object"],
)
def test_damaged_manifest_ends_in_one_line_errors(hashed, tmp_path, damage):
    (hashed.root / "manifest.json").write_text(damage)
    for args in (
        ["status", hashed.root],
        ["status", hashed.root, "--verify"],
        ["query", hashed.root, "SELECT 1"],
        ["dedup", hashed.root, "--report-dir", tmp_path / "rep"],
        ["bias", hashed.root, "--report-dir", tmp_path / "rep"],
    ):
        assert "manifest.json" in one_red_line(run(*args))


def test_damaged_metadata_part_is_named_by_status_verify(hashed, tmp_path):
    part = hashed.root / "metadata" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])
    for args in (
        ["status", hashed.root],
        ["query", hashed.root, "SELECT count(*) FROM metadata"],
        ["dedup", hashed.root, "--report-dir", tmp_path / "rep"],
        ["bias", hashed.root, "--report-dir", tmp_path / "rep"],
    ):
        one_red_line(run(*args))
    assert "metadata/part-00000.parquet" in one_red_line(run("status", hashed.root, "--verify"))


# -- the crawler -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # cloud metadata, in 100.64.0.0/10 shared address space
        "100.64.0.1",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "fec0::1",  # site-local
        "2001:db8::1",
        "fc00::1",
        "::ffff:100.100.100.200",
        "2002:0a00:0001::1",  # 6to4 of 10.0.0.1
        "2002:7f00:0001::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
    ],
)
def test_crawler_refuses_every_address_that_is_not_globally_routable(address):
    ip, why = check_address(address, 80, allow_private=False)
    assert ip is None and why.startswith("refused: "), why


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "64:ff9b::808:808"])
def test_crawler_allows_global_addresses(address):
    assert check_address(address, 80, allow_private=False) == (address, None)


class _Encoded(BaseHTTPRequestHandler):
    TEXT = b"<html><head><meta name='robots' content='noai'></head></html>" * 50

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/bomb":
            z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            chunk = b"\0" * (1 << 20)
            body = b"".join(z.compress(chunk) for _ in range(200)) + z.flush()  # 200 MiB
            enc = "gzip"
        elif self.path == "/gzip":
            body, enc = gzip.compress(self.TEXT), "gzip"
        elif self.path == "/deflate":
            body, enc = zlib.compress(self.TEXT), "deflate"
        else:  # raw deflate, which some servers send as "deflate"
            z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            body, enc = z.compress(self.TEXT) + z.flush(), "deflate"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Encoding", enc)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def encoded_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Encoded)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_crawler_decodes_gzip_and_deflate_under_the_same_byte_cap(encoded_server):
    import resource

    def get(path: str, max_bytes: int):
        return fetch(
            encoded_server + path,
            "page",
            limiter=HostLimiter(1000),
            allow_private=True,
            max_bytes=max_bytes,
            timeout=20,
        )

    for path in ("/gzip", "/deflate", "/raw-deflate"):
        r = get(path, 1 << 20)
        assert r.error is None and r.body == _Encoded.TEXT and not r.body_truncated, path
        cut = get(path, 100)
        assert cut.body == _Encoded.TEXT[:100] and cut.body_truncated
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bomb = get("/bomb", 64 * 1024)
    assert bomb.error is None and len(bomb.body) == 64 * 1024 and bomb.body_truncated
    assert set(bomb.body) == {0}
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100  # 200 MiB decoded would show here; the server's own buffer is ~0.2 MB


# -- resources and bad values ------------------------------------------------------------------------


def test_huge_tar_member_is_an_error_row_and_never_read_whole(tmp_path, monkeypatch):
    shard = tmp_path / "00000.tar"
    small, big = encode(synthetic_image(1, size=16)), encode(synthetic_image(2, size=128))
    assert len(small) < len(big)
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", len(small))  # stands for 256 MiB
    with tarfile.open(shard, "w") as tf:
        for key, data in (("000000000", small), ("000000001", big)):
            for ext, payload in (("png", data), ("txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    metadata.ingest(tmp_path / "ws", [shard])
    rows = sql.query(tmp_path / "ws", "SELECT key, image_status FROM metadata ORDER BY key")
    assert [r["image_status"] for r in rows.to_pylist()] == ["ok", "error"]
    errs = sql.query(tmp_path / "ws", "SELECT reason FROM errors WHERE stage = 'ingest'")
    assert errs.column("reason").to_pylist() == ["image_too_large"]
    # hash and embed read through read_bytes, which refuses the same member before reading
    with pytest.raises(images.ImageProblem, match="image_too_large"):
        images.read_bytes(str(shard), 0, len(big))


def test_huge_png_is_refused_before_decoding_and_jpeg_is_decoded_reduced(
    make_workspace, monkeypatch
):
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 150 * 150)
    png = encode(synthetic_image(1, size=200))  # 40,000 pixels: a full decode is refused
    jpeg = encode(synthetic_image(2, size=400), "JPEG", quality=90)  # draft decodes 100x100
    ws = make_workspace([png, jpeg])
    for fast in (True, False):
        s = hashes.compute(ws.root, workers=1, fast_decode=fast)
        reasons = sql.query(ws.root, "SELECT row_id, reason FROM errors WHERE stage = 'hash'")
        by_row = dict(
            zip(*(reasons.column(c).to_pylist() for c in ("row_id", "reason")), strict=True)
        )
        if fast:
            assert s["hashed"] == 1 and by_row == {0: "image_too_large"}
        else:  # exact decoding cannot reduce the JPEG: both refused, neither decoded
            assert s["hashed"] == 0 and by_row == {0: "image_too_large", 1: "image_too_large"}


def test_long_caption_is_cut_to_the_context_before_tokenising():
    from audit import embeddings

    clip = embeddings.load_model("tiny", "none")
    seen: list[int] = []
    real = clip.tokenizer

    class Spy:
        context_length = real.context_length

        def __call__(self, texts):
            seen.extend(len(t) for t in texts)
            return real(texts)

    caption = "a photo of a cat sitting on a mat " * 30_000  # about 1 MB
    clip.tokenizer = Spy()
    cut = clip.tokenize([caption])
    limit = embeddings.CHARS_PER_TOKEN * real.context_length
    assert seen == [limit]
    assert (cut == real([caption])).all()  # the same tokens as the whole caption


def test_hash_workers_die_with_their_parent_on_kill_9(tmp_path):
    pids = tmp_path / "pids"
    script = (
        "import os, sys, time\nfrom audit import hashes\n"
        "def slow(task):\n"
        "    with open(sys.argv[1], 'a') as f:\n"
        "        f.write(f'{os.getpid()}\\n')\n"
        "    time.sleep(120)\n"
        "hashes._hash_chunk = slow\n"
        "list(hashes._run_tasks([{}, {}, {}, {}], workers=2))\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(pids)], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_pids(pids)) < 2:
            time.sleep(0.1)
        workers = _pids(pids)
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_bad_values_become_bad_value_error_rows(tmp_path):
    src = tmp_path / "laion.parquet"
    pq.write_table(
        pa.table(
            {
                "URL": pa.array([1234, 5678], pa.int64()),
                "TEXT": pa.array([["a", "list"], ["of", "words"]], pa.list_(pa.string())),
                "WIDTH": pa.array([-5, 640], pa.int64()),
            }
        ),
        src,
    )
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(
        pa.table({"url": pa.array([None, None], pa.string()), "caption": ["x", "y"]}), nulls
    )
    metadata.ingest(tmp_path / "ws", [src, nulls])
    rows = sql.query(tmp_path / "ws", "SELECT url, caption, width FROM metadata ORDER BY row_id")
    assert rows.to_pylist() == [
        {"url": None, "caption": None, "width": None},
        {"url": None, "caption": None, "width": 640},
        {"url": None, "caption": "x", "width": None},
        {"url": None, "caption": "y", "width": None},
    ]
    errs = sql.query(
        tmp_path / "ws", "SELECT row_id, detail FROM errors WHERE reason = 'bad_value' ORDER BY ALL"
    ).to_pylist()
    details = " | ".join(e["detail"] for e in errs)
    assert len(errs) == 7, details  # 2 urls + 2 captions + 1 width + 2 null urls
    assert "url: 1234 is a int64, not text" in details and "width: -5 is negative" in details
    assert "caption: ['a', 'list']" in details and "url is null" in details


def test_a_stage_that_did_nothing_says_so_and_exits_non_zero(tmp_path, make_workspace):
    # hash on a metadata-only workspace
    ws = make_workspace([None, None, None])
    res = run("hash", ws.root, "--workers", 1)
    assert (
        res.exit_code == 1
        and "Error: no image could be hashed: all 3 rows are errors" in res.output
    )
    # ingest of a 0-row parquet
    empty = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), empty
    )
    res = run("ingest", tmp_path / "ws-empty", empty)
    assert res.exit_code == 1 and "nothing was ingested" in res.output
    # a crawl whose every fetch was refused (loopback, refused before connecting)
    ws2 = build_workspace(tmp_path / "ws-crawl", [None], urls=["http://127.0.0.1:9/a.png"])
    res = run("optout", "crawl", ws2.root, "--cache", tmp_path / "cache", "--rate", 100)
    assert res.exit_code == 1 and "every one of the" in res.output and "refused" in res.output


def test_unwritable_paths_are_one_red_line_and_dedup_records_nothing(hashed, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = one_red_line(run("dedup", hashed.root, "--report-dir", a_file / "reports"))
    assert str(a_file) in line
    assert Workspace.open(hashed.root).stage("dedup") is None  # not "done" with no report
    line = one_red_line(
        run("query", hashed.root, "SELECT 1", "--format", "csv", "--output", a_file / "x.csv")
    )
    assert str(a_file) in line
    for args in (
        ["status", a_file],
        ["query", a_file, "SELECT 1"],
        ["ingest", a_file, SAMPLE / "shards"],
    ):
        assert "is a file" in one_red_line(run(*args))


def test_invalid_option_values_exit_2_as_the_readme_says(hashed):
    assert run("query", hashed.root, "SELECT 1", "--format", "xml").exit_code == 2
    assert run("hash", hashed.root, "--workers", "many").exit_code == 2
    assert run("dedup", hashed.root, "--hamming", "six").exit_code == 2
    assert "exit code 2" in (REPO / "README.md").read_text()


def test_fresh_stage_removes_only_the_files_it_recorded(hashed):
    stray = hashed.root / "hashes" / "notes.txt"
    stray.write_text("mine")
    outside = hashed.root.parent / "outside.parquet"
    outside.write_text("not audit's")
    # a record pointing out of the workspace is never followed when the stage restarts
    manifest = json.loads((hashed.root / "manifest.json").read_text())
    manifest["stages"]["hash"]["parts"]["0"]["outputs"].append({"path": "../outside.parquet"})
    (hashed.root / "manifest.json").write_text(json.dumps(manifest))
    ws = Workspace.open(hashed.root)
    ws.start_stage("hash", {"different": True}, depends_on=["ingest"]).finish({})
    assert stray.exists() and outside.exists()
    assert not (hashed.root / "hashes" / "part-00000.parquet").exists()
