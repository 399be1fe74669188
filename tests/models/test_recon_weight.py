"""``model.recon_weight``: L = w · L_recon + λ · L_HomoCon, checked against loop references."""

import pytest
import torch

from mixedae.config import PretrainConfig, load_config
from mixedae.errors import UserError

from ._helpers import n64, ref_homocon, ref_mixing_recon, ref_norm_pix, ref_patchify, small_model


def forward_with_references(model, imgs):
    """The model's loss and metrics, and the loop references of L_recon and L_HomoCon for the same draw."""
    captured = {}
    model.encoder.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("latent", o))
    torch.manual_seed(0)
    loss, out = model(imgs)
    g = model.group_size
    target = ref_norm_pix(ref_patchify(n64(imgs), 4)).reshape(len(imgs) // g, g, 16, 48)
    recon = ref_mixing_recon(n64(out["pred"]), target, out["assign"].numpy())
    homocon = ref_homocon(n64(captured["latent"][:, 1:]), out["assign"].flatten(0, 1).numpy(), model.tau)
    return loss, out, recon, homocon


@pytest.mark.parametrize("w,lam", [(0.3, 0.5), (2.0, 0.0), (1.0, 1.0)])
def test_loss_is_weighted_sum(w, lam):
    model = small_model("mixedae", recon_weight=w, homocon_weight=lam)
    torch.manual_seed(1)
    imgs = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        loss, out, recon, homocon = forward_with_references(model, imgs)
    assert out["metrics"]["recon"].item() == pytest.approx(recon, rel=1e-5)  # reported unweighted
    assert loss.item() == pytest.approx(w * recon + lam * homocon, rel=1e-5)


def test_homocon_alone_trains_no_decoder():
    """w = 0: the loss is λ·HomoCon only, so the decoder gets zero gradient and the encoder does not."""
    model = small_model("mixedae", recon_weight=0.0, homocon_weight=0.7)
    torch.manual_seed(1)
    loss, out, recon, homocon = forward_with_references(model, torch.randn(8, 3, 16, 16))
    assert loss.item() == pytest.approx(0.7 * homocon, rel=1e-5)
    assert out["metrics"]["recon"].item() == pytest.approx(recon, rel=1e-5)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_nothing_to_learn_is_refused():
    with pytest.raises(ValueError, match="nothing to learn"):
        small_model("mixedae", recon_weight=0.0, homocon_weight=0.0)
    with pytest.raises(ValueError, match="nothing to learn"):
        small_model("mix", recon_weight=0.0)  # the naive-mixing preset has λ = 0
    with pytest.raises(ValueError, match=">= 0"):
        small_model("mixedae", recon_weight=-1.0)
    with pytest.raises(ValueError, match="do not apply to mae"):
        small_model("mae", recon_weight=0.5)


def test_config_key():
    cfg = load_config(PretrainConfig, None, ["model.recon_weight=0"])
    assert cfg.model.create_kwargs(None)["recon_weight"] == 0.0
    assert "recon_weight" not in load_config(PretrainConfig).model.create_kwargs(None)  # default: the preset's 1.0
    with pytest.raises(UserError, match="model.recon_weight"):
        load_config(PretrainConfig, None, ["model.recon_weight=heavy"])


def test_cli_refuses_nothing_to_learn(tmp_path, capsys):
    from mixedae.cli import main

    code = main(["pretrain", "--output-dir", str(tmp_path / "run"), "model.recon_weight=0", "model.homocon_weight=0",
                 "data.num_samples=16", "train.batch_size=8", "log.tensorboard=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nothing to learn" in err[0]
