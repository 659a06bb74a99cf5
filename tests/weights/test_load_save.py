"""Model folders (OpenCLIP's hub layout): save -> load round trips through ``local-dir:``, the training-checkpoint
export command, the Hugging Face hub path (the folder written by OpenCLIP's own ``save_for_hf``, uploaded, then
``hf-hub:`` loading through OpenCLIP's ``download_pretrained_from_hf``; hub calls served from a local folder),
and one-line errors for checkpoints that do not fit."""
import importlib
import json
import shutil

import pytest
import torch

import open_clip
import open_clip_simzss
from open_clip_simzss.weights.resolve import BIN_WEIGHTS_NAME, CONFIG_NAME, SAFE_WEIGHTS_NAME
from open_clip_simzss.weights.save import save_pretrained
from open_clip_simzss.cli.checkpoint import main
from open_clip_simzss.weights.load import load_model, load_tokenizer
from open_clip_simzss.weights.read import CheckpointError, read_state_dict


def trained_tiny(seed=0):
    """simzss-tiny with non-default weights everywhere (a round trip must carry every tensor)."""
    torch.manual_seed(seed)
    model = open_clip_simzss.create_model("simzss-tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


_EXPECTED = {}


def outputs(model):
    """Global and dense image features (a non-square input), text features and the logit scale."""
    image = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("simzss-tiny")(["a cat on grass", "sky"])
    model.eval()
    with torch.no_grad():
        return (*model.visual.forward_tokens(image), model.encode_text(text), model.logit_scale.detach().clone())


def assert_same_outputs(reference, loaded):
    """Bit-identical outputs (the reference model's are computed once per test session)."""
    if id(reference) not in _EXPECTED:
        _EXPECTED[id(reference)] = outputs(reference)
    for x, y in zip(_EXPECTED[id(reference)], outputs(loaded)):
        torch.testing.assert_close(y, x, rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny():
    return trained_tiny()


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    return save_pretrained(tiny, tmp_path_factory.mktemp("models") / "tiny", model_name="simzss-tiny")


def test_saved_folder_layout_and_config(tiny_folder):
    assert sorted(p.name for p in tiny_folder.iterdir()) == sorted([CONFIG_NAME, SAFE_WEIGHTS_NAME])
    config = json.loads((tiny_folder / CONFIG_NAME).read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"}
    vision = config["model_cfg"]["vision_cfg"]
    assert vision["timm_model_pretrained"] is False and "pretrained_file" not in vision
    assert config["model_cfg"]["text_cfg"]["width"] == 128
    assert config["preprocess_cfg"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                        "interpolation": "bicubic", "resize_mode": "shortest"}


def test_local_dir_round_trip(tiny, tiny_folder):
    loaded = open_clip_simzss.create_model(f"local-dir:{tiny_folder}")
    assert_same_outputs(tiny, loaded)
    assert tuple(open_clip.get_model_preprocess_cfg(loaded)["mean"]) == (0.5, 0.5, 0.5)
    # the same folder through load_model, as a path and as local-dir:
    for checkpoint in (str(tiny_folder), f"local-dir:{tiny_folder}"):
        model, _ = load_model(checkpoint=checkpoint)
        assert model.source.weights.endswith(SAFE_WEIGHTS_NAME)
        assert_same_outputs(tiny, model)
        assert load_tokenizer(model)(["cat"]).shape == (1, 77)


def test_config_is_checked_against_the_model(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="pass model_name"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(CheckpointError, match="does not describe this model"):
        save_pretrained(tiny, tmp_path / "x", model_name="simzss-vits14")
    assert not (tmp_path / "x").exists()


def test_export_training_checkpoint(tiny, tmp_path, capsys):
    """A checkpoint as training.main writes it, exported with one command (model name from params.txt)."""
    run = tmp_path / "logs" / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("batch_size: 4\nforce_image_size: None\nmodel: simzss-tiny\nname: run\n")
    optimizer = torch.optim.AdamW([tiny.logit_scale], lr=1e-3)
    tiny.logit_scale.grad = torch.ones_like(tiny.logit_scale)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    optimizer.step()  # real optimizer state in the file, as in training checkpoints
    tiny.logit_scale.grad = None
    with torch.no_grad():
        tiny.load_state_dict(state)
    checkpoint = run / "checkpoints" / "epoch_7.pt"
    torch.save({"epoch": 7, "name": "run", "state_dict": state, "optimizer": optimizer.state_dict()}, checkpoint)

    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    assert f"local-dir:{out}" in capsys.readouterr().out
    assert_same_outputs(tiny, load_model(checkpoint=str(out))[0])
    # explicit --model, both weight formats; the .bin alone loads too (weights_only)
    assert main(["export", "--checkpoint", str(checkpoint), "--model", "simzss-tiny", "--output", str(out / "b"),
                 "--format", "both"]) == 0
    assert {p.name for p in (out / "b").iterdir()} == {CONFIG_NAME, SAFE_WEIGHTS_NAME, BIN_WEIGHTS_NAME}
    (out / "b" / SAFE_WEIGHTS_NAME).unlink()
    assert_same_outputs(tiny, open_clip_simzss.create_model(f"local-dir:{out / 'b'}"))


@pytest.mark.parametrize("argv,message", [
    (["export", "--checkpoint", "{ckpt}", "--model", "simzss-vits14", "--output", "{out}"], "does not fit simzss-vits14"),
    (["export", "--checkpoint", "{tmp}/nope.pt", "--model", "simzss-tiny", "--output", "{out}"], "not found"),
    (["export", "--checkpoint", "{ckpt}", "--output", "{out}"], "pass --model"),
    (["export", "--checkpoint", "{ckpt}", "--model", "simzss-huge", "--output", "{out}"], "unknown SimZSS model"),
    (["export", "--checkpoint", "{ckpt}"], "required"),
    (["convert", "--checkpoint", "{ckpt}", "--output", "{out}"], "not a SimZSS reference checkpoint"),
])
def test_export_errors_are_one_line(tiny, tmp_path, capsys, argv, message):
    ckpt = tmp_path / "plain.pt"
    torch.save(tiny.state_dict() if "convert" not in argv else {"text.ln_final.weight": torch.ones(3)}, ckpt)
    argv = [a.format(ckpt=ckpt, out=tmp_path / "out", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_load_model_refuses_other_models(tiny, tiny_folder, tmp_path):
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}},
               tmp_path / "ddp.pt")
    model, _ = load_model("simzss-tiny", str(tmp_path / "ddp.pt"))  # DDP prefix stripped
    assert_same_outputs(tiny, model)
    with pytest.raises(CheckpointError, match="does not fit simzss-vits14") as e:
        load_model("simzss-vits14", str(tmp_path / "ddp.pt"))
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="another model than simzss-vitb14"):
        load_model("simzss-vitb14", str(tiny_folder))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model("simzss-tiny", str(tmp_path / "missing.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model(checkpoint=str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="precision must be one of fp32, bf16") as e:
        load_model("simzss-tiny", precision="amp_bf17")  # before anything is resolved or built
    assert "\n" not in str(e.value)


class _Pickled:  # not a tensor: torch.load(weights_only=True) must refuse it
    pass


def test_weights_only_loading(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": _Pickled()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "unsafe.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "junk.pt")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The Hugging Face hub replaced by a folder: uploads (``huggingface_hub.create_repo``/``upload_folder``)
    land in hub/<repo_id>/, and downloads (``open_clip.pretrained.hf_hub_download``, which every hf-hub: load
    goes through, in OpenCLIP's ``download_pretrained_from_hf``) are served from there."""
    import huggingface_hub
    hub = tmp_path / "hub"
    calls = []

    def create_repo(repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(*, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, hub / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/0"

    def hf_hub_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        path = hub / repo_id / filename
        if not path.is_file():
            raise FileNotFoundError(f"404: {repo_id}/{filename}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    monkeypatch.setattr(importlib.import_module("open_clip.pretrained"), "hf_hub_download", hf_hub_download)
    return hub, calls


def test_hub_upload_and_hf_hub_loading(tiny, tiny_folder, fake_hub, capsys):
    hub, calls = fake_hub
    # the upload command: our folder -> OpenCLIP's save_for_hf layout -> what the hub stores
    assert main(["push", "--checkpoint", str(tiny_folder), "--repo-id", "me/simzss-tiny", "--private"]) == 0
    assert "hf-hub:me/simzss-tiny" in capsys.readouterr().out
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"] and calls[0][2]["private"] is True
    stored = hub / "me" / "simzss-tiny"
    assert {p.name for p in stored.iterdir()} == {CONFIG_NAME, SAFE_WEIGHTS_NAME, BIN_WEIGHTS_NAME, "README.md"}
    config = json.loads((stored / CONFIG_NAME).read_text())
    assert config["model_cfg"] == json.loads((tiny_folder / CONFIG_NAME).read_text())["model_cfg"]
    assert config["preprocess_cfg"]["mean"] == [0.5, 0.5, 0.5]
    readme = (stored / "README.md").read_text()
    assert "library_name: open_clip" in readme and "hf-hub:me/simzss-tiny" in readme
    # hf-hub: loading, through the factory and through load_model with a bare hub id
    assert_same_outputs(tiny, open_clip_simzss.create_model("hf-hub:me/simzss-tiny"))
    model, _ = load_model(checkpoint="me/simzss-tiny")
    assert model.source.spec == "hf-hub:me/simzss-tiny" and model.source.weights.endswith(SAFE_WEIGHTS_NAME)
    assert_same_outputs(tiny, model)
    with pytest.raises(CheckpointError, match="Hugging Face hub") as e:
        load_model(checkpoint="me/not-there")
    assert "\n" not in str(e.value)


def test_open_clip_save_for_hf_folder_loads(tiny, tmp_path):
    """The folder OpenCLIP's own writer produces (what open_clip.push_to_hf_hub uploads) is a valid local-dir:."""
    from open_clip.push_to_hf_hub import save_for_hf

    class NoFiles:
        def save_pretrained(self, dest):
            pass

    config = json.loads(json.dumps(open_clip.get_model_config("simzss-tiny")))
    config["vision_cfg"]["timm_model_pretrained"] = False
    save_for_hf(tiny, NoFiles(), config, tmp_path / "oc", safe_serialization=True)
    assert_same_outputs(tiny, open_clip_simzss.create_model(f"local-dir:{tmp_path / 'oc'}"))
