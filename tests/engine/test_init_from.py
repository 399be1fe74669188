"""model.init_from: official MAE checkpoints (with or without decoder), our exports and runs; shape errors;
ignored on resume."""

from __future__ import annotations

import json

import pytest
import torch

from mixedae.distributed import DistInfo
from mixedae.engine.init_from import init_model
from mixedae.engine.pretrain import Pretrainer, pretrain
from mixedae.errors import UserError
from mixedae.export import export_encoder
from mixedae.models import create_model

from .test_pretrain import config, weights

TINY = dict(depth=1, embed_dim=32, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, img_size=16)
# Our names → the official MAE release's (models_mae.py), written out here independently of the mapper.
OFFICIAL = [("encoder.", ""), ("decoder.embed.", "decoder_embed."), ("decoder.mask_token", "mask_token"),
            ("decoder.pos_embed", "decoder_pos_embed"), ("decoder.blocks.", "decoder_blocks."),
            ("decoder.norm.", "decoder_norm."), ("decoder.pred.", "decoder_pred.")]


def official_name(key: str) -> str:
    for ours, theirs in OFFICIAL:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise AssertionError(key)


def mae_source(seed: int = 1):
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny_patch4_32", **TINY)


def test_official_mae_checkpoint_with_decoder_loads_every_tensor(tmp_path):
    mae = mae_source()
    official = {official_name(k): v.clone() for k, v in mae.state_dict().items()}
    assert {"cls_token", "blocks.0.attn.qkv.weight", "decoder_blocks.0.mlp.fc2.bias", "mask_token",
            "decoder_pred.weight"} <= set(official)
    torch.save({"model": official}, tmp_path / "mae_pretrain_full.pth")
    torch.manual_seed(2)
    model = create_model("mixedae_vit_tiny_patch4_32", **TINY)
    summary, _ = init_model(model, str(tmp_path / "mae_pretrain_full.pth"))
    got = model.state_dict()
    for key, value in mae.state_dict().items():  # every tensor arrives under our name
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert "MAE-style" in summary and "fresh: segment_embed (1)" in summary and "not used: none" in summary
    n_enc = sum(k.startswith("encoder.") and k != "encoder.pos_embed" for k in got)
    assert f"encoder {n_enc}, decoder " in summary


def test_encoder_only_checkpoint_leaves_the_decoder_fresh(tmp_path):
    mae = mae_source()
    encoder_only = {official_name(k): v for k, v in mae.state_dict().items() if k.startswith("encoder.")}
    torch.save({"model": {**encoder_only, "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}},
               tmp_path / "mae_pretrain.pth")
    model = create_model("mixedae_vit_tiny_patch4_32", **TINY)
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("decoder.")}
    summary, _ = init_model(model, str(tmp_path / "mae_pretrain.pth"))
    for key, value in decoder_before.items():
        assert torch.equal(model.state_dict()[key], value), key
    torch.testing.assert_close(model.encoder.blocks[0].mlp.fc1.weight, mae.encoder.blocks[0].mlp.fc1.weight)
    assert "decoder 0" in summary and "decoder.blocks (" in summary and "not used: none" in summary  # head dropped


def test_export_folder_initialises_the_encoder(tmp_path):
    mae = mae_source()
    export_encoder(mae.encoder, tmp_path / "export")
    model = create_model("mixedae_vit_tiny_patch4_32", **TINY)
    summary, _ = init_model(model, str(tmp_path / "export"))
    for key, value in mae.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value, msg=key)
    assert "export (encoder only)" in summary


def test_shape_mismatch_is_an_error_naming_the_key(tmp_path):
    torch.save({"model": {official_name(k): v for k, v in mae_source().state_dict().items()}}, tmp_path / "m.pth")
    model = create_model("mixedae_vit_tiny_patch4_32", **{**TINY, "embed_dim": 48})
    with pytest.raises(UserError, match=r"encoder\.cls_token is \(1, 1, 32\) there but \(1, 1, 48\) in this model"):
        init_model(model, str(tmp_path / "m.pth"))


def test_unrelated_file_is_refused(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="none of its 1 tensors"):
        init_model(create_model("mae_vit_tiny_patch4_32", **TINY), str(tmp_path / "other.pth"))


def test_mae_run_initialises_a_mixedae_run_and_resume_ignores_init_from(tmp_path, capsys):
    common = ["data.num_samples=16", "train.batch_size=8", "train.max_steps=2", "log.recon_every_epochs=9",
              "train.precision=fp32"]
    pretrain(config(tmp_path / "mae", *common, "model.name=mae_vit_tiny_patch4_32"))
    mae = weights(tmp_path / "mae" / "last.pt")
    cfg = config(tmp_path / "mixed", *common, f"model.init_from={tmp_path / 'mae'}")
    trainer = Pretrainer(cfg, DistInfo())
    got = trainer.model.state_dict()
    for key, value in mae.items():  # the encoder and the decoder of the MAE run
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    err = capsys.readouterr().err
    assert "mixedae checkpoint of mae_vit_tiny_patch4_32" in err and "fresh: segment_embed (1)" in err
    provenance = json.loads((tmp_path / "mixed" / "init_from.json").read_text())
    assert provenance["path"] == str((tmp_path / "mae" / "last.pt").resolve()) and len(provenance["digest"]) == 16

    trainer.run()  # two steps: its weights now differ from the MAE run's
    saved = weights(tmp_path / "mixed" / "last.pt")
    resumed = Pretrainer(cfg, DistInfo(), resume="auto")
    assert "model.init_from ignored: resuming from" in capsys.readouterr().err
    for key, value in saved.items():  # the checkpoint wins
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
