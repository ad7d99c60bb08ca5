"""Regenerate the interop fixtures with the released img2dataset and clip-retrieval.

Run with an interpreter that has img2dataset==1.47.0 and clip-retrieval==2.45.0 installed
(never audit's own venv; see README.md here for the exact setup):

    python tests/data/interop/make_fixtures.py

It serves eight public-domain images from Debian's openclipart-png on 127.0.0.1:8765, writes
the inputs (URL list, img2dataset-style `url,txt` parquet, CSV with other column names),
runs img2dataset three times (`files`, `webdataset`, `parquet`) and clip-retrieval inference
on the webdataset output with a tiny open_clip model (random weights, built in code: no
weights can be downloaded here). Everything lands beside this script.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIPART = Path("/usr/share/openclipart/png/animals")
IMAGES = [
    ("armadillo_architetto_fra_01.png", "an armadillo drawn in brown"),
    ("baby-tux_alex_kuehne_01.png", "a baby penguin, the Linux mascot"),
    ("bat_orlando_karam_.png", "a black bat with open wings"),
    ("birds/acquila_architetto_franc_02.png", "an eagle in flight"),
    ("birds/cigno_architetto_frances_01.png", "a white swan on water"),
    ("birds/cormorant-md.png", "a cormorant standing"),
    ("bison_leif_lodahl_01.png", "a bison seen from the side"),
    ("crawfish1_ganson.png", "a red crawfish"),
]
PORT = 8765
RESIZE = 48  # stored images are resized (and re-encoded): the declared sha256 is of the download


def main() -> None:
    site = HERE / ".site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    for name, _ in IMAGES:
        shutil.copy(CLIPART / name, site / Path(name).name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write_inputs()
        run_img2dataset()
        run_clip_retrieval()
    finally:
        server.shutdown()
        shutil.rmtree(site, ignore_errors=True)


def write_inputs() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs = HERE / "inputs"
    inputs.mkdir(exist_ok=True)
    urls = [f"http://127.0.0.1:{PORT}/{Path(n).name}" for n, _ in IMAGES]
    urls.append(f"http://127.0.0.1:{PORT}/missing.png")  # a 404: img2dataset records a failure
    caps = [c for _, c in IMAGES] + ["an image that is not there"]
    (inputs / "urls.txt").write_text("".join(u + "\n" for u in urls))
    pq.write_table(pa.table({"url": urls, "txt": caps}), inputs / "sample.parquet")
    with open(inputs / "mapped.csv", "w") as f:  # other column names: --url-col / --caption-col
        f.write("image_link,alt_description,LANGUAGE\n")
        for u, c in zip(urls, caps, strict=True):
            f.write(f'{u},"{c}",en\n')


def run_img2dataset() -> None:
    from img2dataset import download

    for fmt in ("files", "webdataset", "parquet"):
        out = HERE / "img2dataset" / fmt
        shutil.rmtree(out, ignore_errors=True)
        download(
            url_list=str(HERE / "inputs" / "sample.parquet"),
            input_format="parquet",
            url_col="url",
            caption_col="txt",
            output_folder=str(out),
            output_format=fmt,
            image_size=RESIZE,
            resize_mode="keep_ratio",
            encode_format="jpg",
            encode_quality=80,
            processes_count=1,
            thread_count=4,
            number_sample_per_shard=100,
            distributor="multiprocessing",
            enable_wandb=False,
            compute_hash="sha256",
            timeout=5,
            retries=0,
        )
    # a URL-list (.txt) run, as `img2dataset --url_list urls.txt`: captions are absent
    out = HERE / "img2dataset" / "from_txt"
    shutil.rmtree(out, ignore_errors=True)
    download(
        url_list=str(HERE / "inputs" / "urls.txt"),
        input_format="txt",
        output_folder=str(out),
        output_format="webdataset",
        image_size=RESIZE,
        resize_mode="keep_ratio",
        processes_count=1,
        thread_count=4,
        distributor="multiprocessing",
        enable_wandb=False,
        timeout=5,
        retries=0,
    )


def run_clip_retrieval() -> None:
    import open_clip
    import torch
    from clip_retrieval.clip_inference.main import main as clip_inference
    from open_clip import factory

    # A tiny architecture registered with open_clip (as audit's `tiny` model is), seeded random
    # weights saved to a checkpoint, and clip-retrieval loads `open_clip:<arch>/<checkpoint>`.
    config = {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 64,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
    factory._MODEL_CONFIGS["interop-tiny"] = config
    torch.manual_seed(0)
    model = open_clip.create_model("interop-tiny", pretrained=None)
    ckpt = HERE / ".interop-tiny.pt"
    torch.save(model.state_dict(), ckpt)
    out = HERE / "clip_retrieval"
    shutil.rmtree(out, ignore_errors=True)
    try:
        clip_inference(
            input_dataset=str(HERE / "img2dataset" / "webdataset" / "00000.tar"),
            output_folder=str(out),
            input_format="webdataset",
            enable_metadata=True,
            clip_model=f"open_clip:interop-tiny/{ckpt}",
            use_jit=False,
            batch_size=4,
            num_prepro_workers=1,
            cache_path=None,
            enable_wandb=False,
            output_partition_count=1,
        )
    finally:
        ckpt.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
