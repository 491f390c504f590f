"""MMDetection's Swin-T RetinaNet (the CrossKD heterogeneous teacher) in kdzoo's ``retinanet_swin_t``.

* The official MMDetection 3.3 layout (``tests/data/mmdet_layouts/retinanet_swin-t-p4-w7_fpn_1x_coco.json``)
  converts one to one: every tensor lands where it belongs, PatchMerging's ``nn.Unfold`` channel order
  included (the expected places are written here, independently of ``kdzoo.convert``).
* The converted backbone computes what MMDetection's ``SwinTransformer`` computes, checked against a
  small reference implementation of MMDetection's forward (below) that reads the MMDetection-keyed
  state dict directly, on input sizes whose feature maps are not window multiples.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo.backbone import TimmBackbone
from kdzoo.convert import mmdet_to_kdzoo
from kdzoo.pretrained import load_state_dict_checked

LAYOUT = Path(__file__).resolve().parent / "data" / "mmdet_layouts" / "retinanet_swin-t-p4-w7_fpn_1x_coco.json"
DEPTHS, HEADS, WINDOW, PATCH, OUT_INDICES = (2, 2, 6, 2), (3, 6, 12, 24), 7, 4, (1, 2, 3)


# ----------------------------------------------------------------------------- MMDetection reference
def mmdet_relative_position_index(window: int) -> torch.Tensor:
    """``WindowMSA.relative_position_index`` as MMDetection builds it (stored in its checkpoints)."""
    rows = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)
    coords = (rows[:, None] + torch.arange(window)[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1).contiguous()


def _ln(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _shift_mask(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """(num_windows, N, N) additive mask: -100 between tokens of different regions of the padded map."""
    def region(n):  # 0: never wrapped, 1: last window before the seam, 2: the wrapped strip
        i = torch.arange(n)
        return (i >= n - window).long() + (i >= n - shift).long()

    label = region(hp)[:, None] * 3 + region(wp)[None, :]
    label = label.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    return torch.where(label[:, None, :] != label[:, :, None], -100.0, 0.0)


def _window_msa(x: torch.Tensor, sd: dict, p: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    bw, n, c = x.shape
    q, k, v = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).view(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    bias = sd[p + "relative_position_bias_table"][sd[p + "relative_position_index"].reshape(-1)]
    attn = attn + bias.view(n, n, heads).permute(2, 0, 1)[None]
    if mask is not None:
        attn = (attn.view(-1, mask.shape[0], heads, n, n) + mask[None, :, None]).view(bw, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
    return F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def _swin_block(x, hw, sd, p, heads, shift, window=WINDOW):
    b, l, c = x.shape
    h, w = hw
    y = _ln(x, sd, p + "norm1").view(b, h, w, c)
    y = F.pad(y, (0, 0, 0, (-w) % window, 0, (-h) % window))  # pad first ...
    hp, wp = y.shape[1], y.shape[2]
    mask = None
    if shift:  # ... then shift, with the mask of the padded map
        y = torch.roll(y, (-shift, -shift), (1, 2))
        mask = _shift_mask(hp, wp, window, shift)
    win = y.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)
    win = _window_msa(win, sd, p + "attn.w_msa.", heads, mask)
    y = win.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if shift:
        y = torch.roll(y, (shift, shift), (1, 2))
    x = x + y[:, :h, :w].reshape(b, l, c)
    z = F.gelu(F.linear(_ln(x, sd, p + "norm2"), sd[p + "ffn.layers.0.0.weight"], sd[p + "ffn.layers.0.0.bias"]))
    return x + F.linear(z, sd[p + "ffn.layers.1.weight"], sd[p + "ffn.layers.1.bias"])


def _patch_merging(x, hw, sd, p):
    b, _, c = x.shape
    h, w = hw
    grid = x.transpose(1, 2).reshape(b, c, h, w)
    grid = F.pad(grid, (0, w % 2, 0, h % 2))  # AdaptivePadding('corner') for kernel 2, stride 2
    cols = F.unfold(grid, kernel_size=2, stride=2).transpose(1, 2)  # (B, L', 4C), nn.Unfold's order
    out = F.linear(_ln(cols, sd, p + "norm"), sd[p + "reduction.weight"])
    return out, (grid.shape[2] // 2, grid.shape[3] // 2)


@torch.no_grad()
def mmdet_swin_forward(sd: dict, img: torch.Tensor) -> list[torch.Tensor]:
    """MMDetection 3.3 ``SwinTransformer.forward`` (eval) on an MMDetection-keyed state dict."""
    sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    img = F.pad(img, (0, (-img.shape[-1]) % PATCH, 0, (-img.shape[-2]) % PATCH))  # AdaptivePadding('corner')
    x = F.conv2d(img, sd["patch_embed.projection.weight"], sd["patch_embed.projection.bias"], stride=PATCH)
    hw = (x.shape[2], x.shape[3])
    x = _ln(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    outs = []
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):  # every second block of every stage is shifted, whatever the map size
            x = _swin_block(x, hw, sd, f"stages.{i}.blocks.{j}.", HEADS[i], WINDOW // 2 if j % 2 else 0)
        if i in OUT_INDICES:
            out = _ln(x, sd, f"norm{i}")
            outs.append(out.transpose(1, 2).reshape(x.shape[0], -1, *hw))
        if i < len(DEPTHS) - 1:
            x, hw = _patch_merging(x, hw, sd, f"stages.{i}.downsample.")
    return outs


# ----------------------------------------------------------------------------- checkpoints and models
def swin_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key and shape of the official checkpoint; random values of a trained model's scale (so
    masks and the relative position bias matter) and MMDetection's own relative_position_index."""
    spec = json.loads(LAYOUT.read_text())["state_dict"]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in spec.items():
        if k.endswith("relative_position_index"):
            out[k] = mmdet_relative_position_index(WINDOW)
        elif k.endswith("relative_position_bias_table"):
            out[k] = torch.randn(shape, generator=g)
        elif len(shape) > 1:
            fan_in = torch.Size(shape[1:]).numel()
            out[k] = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif re.search(r"norm\d*\.weight$", k):
            out[k] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            out[k] = 0.1 * torch.randn(shape, generator=g)
    return out


@pytest.fixture(scope="module")
def ckpt() -> dict[str, torch.Tensor]:
    return swin_checkpoint()


@pytest.fixture(scope="module")
def converted_model(ckpt):
    model = kdzoo.create_detector("retinanet_swin_t", input_size=(320, 224))
    load_state_dict_checked(model, mmdet_to_kdzoo({"meta": {}, "state_dict": ckpt}, model))
    return model.eval()


def expected_source(key: str) -> str:
    """The MMDetection key a kdzoo ``retinanet_swin_t`` key comes from (independent of kdzoo.convert)."""
    m = re.fullmatch(r"backbone\.body\.layers_(\d)\.downsample\.(.+)", key)
    if m:  # timm merges at the start of stage i, MMDetection at the end of stage i - 1
        return f"backbone.stages.{int(m[1]) - 1}.downsample.{m[2]}"
    m = re.fullmatch(r"backbone\.body\.layers_(\d)\.blocks\.(\d+)\.(.+)", key)
    if m:
        rest = m[3]
        for timm_name, mmdet_name in (("attn.", "attn.w_msa."), ("mlp.fc1.", "ffn.layers.0.0."), ("mlp.fc2.", "ffn.layers.1.")):
            if rest.startswith(timm_name):
                rest = mmdet_name + rest[len(timm_name):]
        return f"backbone.stages.{m[1]}.blocks.{m[2]}.{rest}"
    if key.startswith("backbone.body.patch_embed.proj."):
        return "backbone.patch_embed.projection." + key.rsplit(".", 1)[1]
    if key.startswith("backbone.body."):
        return "backbone." + key[len("backbone.body."):]
    m = re.fullmatch(r"neck\.fpn\.(inner_blocks|layer_blocks)\.(\d)\.0\.(weight|bias)", key)
    if m:
        return f"neck.{'lateral_convs' if m[1] == 'inner_blocks' else 'fpn_convs'}.{m[2]}.conv.{m[3]}"
    m = re.fullmatch(r"neck\.fpn\.extra_blocks\.convs\.(\d)\.(weight|bias)", key)
    if m:
        return f"neck.fpn_convs.{int(m[1]) + 3}.conv.{m[2]}"
    return key  # backbone.norm1..3 and bbox_head.* keep their names


def unfold_column(timm_index: int, channels: int) -> int:
    """timm's PatchMerging feature ``(col offset, row offset, channel)`` -> ``nn.Unfold``'s
    ``(channel, row offset, col offset)`` index."""
    group, c = divmod(timm_index, channels)
    dw, dh = divmod(group, 2)
    return c * 4 + dh * 2 + dw


# ----------------------------------------------------------------------------- conversion
def test_official_layout_converts_one_to_one(ckpt, converted_model, one_thread):
    own = converted_model.state_dict()
    converted = mmdet_to_kdzoo(ckpt, converted_model)
    assert list(converted) == list(own)  # every kdzoo tensor filled, nothing else
    used = set()
    for key, value in converted.items():
        src = expected_source(key)
        assert src in ckpt, f"{key} should come from {src}"
        assert value.shape == own[key].shape == ckpt[src].shape, key
        if ".downsample." in key:
            c = ckpt[src].shape[-1] // 4
            index = torch.tensor([unfold_column(j, c) for j in range(4 * c)])
            assert torch.equal(value, ckpt[src][..., index]), f"{key} is not {src} in timm's order"
            assert not torch.equal(value, ckpt[src])
        else:
            assert torch.equal(value, ckpt[src]), f"{key} does not hold {src}"
        used.add(src)
    # Every MMDetection tensor used once, except the index buffers timm recomputes (non-persistent).
    dropped = set(ckpt) - used
    assert dropped == {k for k in ckpt if k.endswith("attn.w_msa.relative_position_index")} and len(dropped) == 12
    assert len(used) == len(converted) == 211
    # Spot checks of the places that matter.
    assert torch.equal(converted["backbone.body.patch_embed.proj.weight"], ckpt["backbone.patch_embed.projection.weight"])
    assert torch.equal(converted["backbone.body.layers_2.blocks.5.attn.qkv.weight"],
                       ckpt["backbone.stages.2.blocks.5.attn.w_msa.qkv.weight"])
    assert torch.equal(converted["backbone.body.layers_3.blocks.1.mlp.fc2.bias"],
                       ckpt["backbone.stages.3.blocks.1.ffn.layers.1.bias"])
    assert torch.equal(converted["backbone.norm3.weight"], ckpt["backbone.norm3.weight"])
    assert converted["backbone.body.layers_3.downsample.reduction.weight"].shape == (768, 1536)
    assert converted["neck.fpn.extra_blocks.convs.0.weight"].shape == (256, 768, 3, 3)  # P6 from C5 (on_input)
    # Column 1 of timm's merge is channel 1 of the top-left patch; column C is channel 0 of the one below it.
    red = ckpt["backbone.stages.0.downsample.reduction.weight"]  # (192, 4 * 96)
    merged = converted["backbone.body.layers_1.downsample.reduction.weight"]
    assert torch.equal(merged[:, 1], red[:, 4]) and torch.equal(merged[:, 96], red[:, 2])
    # Entry 2C of timm's merge norm is channel 0 of the patch to the right: nn.Unfold's entry 1.
    assert torch.equal(converted["backbone.body.layers_1.downsample.norm.bias"][2 * 96],
                       ckpt["backbone.stages.0.downsample.norm.bias"][1])


def test_relative_position_index_is_mmdetections(converted_model):
    """The dropped checkpoint buffer is exactly what timm recomputes."""
    for name, buf in converted_model.backbone.body.named_buffers():
        if name.endswith("relative_position_index"):
            assert torch.equal(buf, mmdet_relative_position_index(WINDOW)), name


def test_swin_windows_follow_mmdetection(converted_model):
    """Window 7 everywhere and shift 3 in every second block of every stage (timm would drop the shift
    of the last stage, whose 7x7 map at 224 px is no larger than the window)."""
    from timm.models.swin_transformer import SwinTransformerBlock

    stages = [[b for b in converted_model.backbone.body.get_submodule(f"layers_{i}").blocks] for i in range(4)]
    assert [len(s) for s in stages] == list(DEPTHS)
    for blocks in stages:
        for j, block in enumerate(blocks):
            assert isinstance(block, SwinTransformerBlock)
            assert block.window_size == (7, 7) and block.shift_size == ((3, 3) if j % 2 else (0, 0))
    assert converted_model.backbone.out_norm_names == ("norm1", "norm2", "norm3")
    assert all(p.requires_grad for p in converted_model.parameters())  # frozen_stages=-1, as MMDetection's config


# ----------------------------------------------------------------------------- numerical equivalence
# (H, W): 224x320 -> maps 56x80 .. 7x10 (last stage as tall as the window); 288x416 -> 72x104 .. 9x13;
# 160x224 -> 5x7 at the last stage (smaller than the window); 190x250 is not even a multiple of the
# patch size (padded by the patch embedding, odd maps padded by PatchMerging).
@pytest.mark.parametrize("size", [(224, 320), (288, 416), (160, 224), (190, 250)])
def test_backbone_matches_mmdetection_swin(size, ckpt, converted_model, one_thread):
    img = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    want = mmdet_swin_forward(ckpt, img)
    with torch.no_grad():
        got = converted_model.backbone(img)
    assert [tuple(f.shape) for f in got] == [tuple(f.shape) for f in want]
    assert want[-1].shape[-2] <= 9  # the last stage is near or below the window size
    for level, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=lambda m: f"C{level + 3} at {size}: {m}")


def _timm_swin(**timm_kwargs) -> TimmBackbone:
    return TimmBackbone("swin_tiny_patch4_window7_224", out_norms=True, strict_img_size=False, **timm_kwargs).eval()


def test_stock_timm_swin_differs_where_maps_are_not_window_multiples(ckpt, converted_model, one_thread):
    """Why ``mmdet_windows`` exists: timm shifts *before* padding to a window multiple and drops the
    shift where a map is no larger than the window. Same weights, other features."""
    weights = {k[len("backbone."):]: v for k, v in converted_model.state_dict().items() if k.startswith("backbone.")}
    partitioned, stock = _timm_swin(always_partition=True), _timm_swin()
    partitioned.load_state_dict(weights)
    stock.load_state_dict(weights)
    img = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(1))
    square = img[..., :224]  # every map a window multiple (56, 28, 14, 7)
    with torch.no_grad():
        # Window multiples: pad and shift commute, timm with always_partition is MMDetection's Swin ...
        torch.testing.assert_close(partitioned(square)[-1], mmdet_swin_forward(ckpt, square)[-1], atol=1e-4, rtol=1e-4)
        # ... but the stock options drop the last stage's shift (7x7 map, window 7),
        assert (stock(square)[-1] - mmdet_swin_forward(ckpt, square)[-1]).abs().max() > 1e-2
        # and elsewhere the shift-then-pad order moves the shifted windows' seam.
        assert (partitioned(img)[0] - mmdet_swin_forward(ckpt, img)[0]).abs().max() > 1e-2


# ----------------------------------------------------------------------------- the whole detector
def test_zoo_entry_loads_converted_checkpoint_and_detects(ckpt, tmp_path, one_thread):
    cfg = kdzoo.get_pretrained_cfg("retinanet_swin_t.crosskd_coco")
    assert cfg.box_ap == 37.3 and cfg.license == "cc-by-nc-4.0" and cfg.filter_fn == "kdzoo.convert:mmdet_to_kdzoo"
    assert cfg.gdrive_id == "1W2KGR77XfQ5SRomgIyxCjqUNGJichcgh"
    path = tmp_path / "retinanet_swin-t-p4-w7_fpn_1x_coco.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": ckpt}, path)
    model = kdzoo.create_detector("retinanet_swin_t.crosskd_coco", pretrained=True, input_size=(320, 224),
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()
    state = model.state_dict()
    assert torch.equal(state["backbone.norm2.bias"], ckpt["backbone.norm2.bias"])
    assert torch.equal(state["bbox_head.retina_cls.weight"], ckpt["bbox_head.retina_cls.weight"])
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 200, 300, generator=g), torch.rand(3, 250, 190, generator=g)]
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) <= 100
        assert torch.isfinite(det["boxes"]).all() and torch.isfinite(det["scores"]).all()
        if len(det["boxes"]):
            assert det["boxes"][:, 2].max() <= img.shape[2] and det["boxes"][:, 3].max() <= img.shape[1]
