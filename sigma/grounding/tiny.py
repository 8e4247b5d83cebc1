"""Tiny random Grounding DINO and SAM 2, built offline, for tests and benchmarks only.

These are the explicit opt-in to random weights: nothing in the annotate path calls them. Each
builder can write a `save_pretrained` folder so tests exercise the real loading path.
"""
from __future__ import annotations

from pathlib import Path

# A small offline vocabulary: BERT's specials, '.', and words our tests ground.
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "an", "the", "of", "and",
              "cat", "dog", "car", "person", "man", "woman", "tree", "bird", "hat", "boat", "sky", "house",
              "chair", "table", "cup", "background", "red", "blue", "green", "square", "circle", "object"]


def tiny_grounding_dino(folder: str | Path | None = None, seed: int = 0, image_size: int = 128):
    """(model, processor) with a 1-layer BERT text encoder and a 4-stage Swin of width 16."""
    import tempfile

    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    with tempfile.TemporaryDirectory() as vocab_dir:
        # BertTokenizerFast(vocab_file=...) ignores the file in transformers 5; from_pretrained(dir) reads it.
        (Path(vocab_dir) / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
        tokenizer = BertTokenizerFast.from_pretrained(vocab_dir)
    swin = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=7, out_indices=[2, 3, 4], out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64)
    config = GroundingDinoConfig(backbone_config=swin, text_config=text, d_model=32, num_queries=20,
                                 encoder_layers=1, decoder_layers=2, num_feature_levels=4, encoder_n_points=2,
                                 decoder_n_points=2, max_text_len=32, disable_custom_kernels=True,
                                 encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                                 decoder_attention_heads=2)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": image_size,
                                                             "longest_edge": image_size}),
        tokenizer=tokenizer)
    if folder is not None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return model, processor


def tiny_sam2(folder: str | Path | None = None, seed: int = 0, image_size: int = 64):
    """A Sam2Model with a 5-block Hiera of width 16 (image_size must be a multiple of 32)."""
    import torch
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    s = image_size
    backbone = Sam2HieraDetConfig(hidden_size=16, num_attention_heads=1, image_size=[s, s],
                                  blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                                  num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[8, 4, 4, 2],
                                  global_attention_blocks=[3])   # not the first block of a stage
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
                              backbone_feature_sizes=[[s // 4] * 2, [s // 8] * 2, [s // 16] * 2],
                              fpn_hidden_size=32)
    config = Sam2Config(vision_config=vision,
                        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=s, patch_size=16,
                                                                      mask_input_channels=4),
                        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, num_hidden_layers=2,
                                                                  num_attention_heads=2, mlp_dim=64,
                                                                  iou_head_hidden_dim=32))
    torch.manual_seed(seed)
    model = Sam2Model(config).eval()
    if folder is not None:
        model.save_pretrained(folder)
    return model


def random_grounding_dino_t(seed: int = 0, image_size: int = 800):
    """(model, processor) with the architecture of IDEA-Research/grounding-dino-tiny (Swin-T, BERT-base text
    encoder, 900 queries, 6+6 layers) and random weights, for benchmarks: speed does not depend on weights.
    The BERT vocabulary is synthetic (specials, '.', a few words, then [unusedN] fillers to 30522)."""
    import tempfile

    import torch
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
    )

    vocab = list(TINY_VOCAB)
    vocab += [f"[unused{i}]" for i in range(30522 - len(vocab))]
    with tempfile.TemporaryDirectory() as vocab_dir:
        (Path(vocab_dir) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizerFast.from_pretrained(vocab_dir)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()   # the defaults are GD-T
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": image_size,
                                                             "longest_edge": int(image_size * 1333 / 800)}),
        tokenizer=tokenizer)
    return model, processor


def random_sam2_hiera_tiny(seed: int = 0):
    """A Sam2Model with the architecture of facebook/sam2.1-hiera-tiny (1024 px) and random weights."""
    import torch
    from transformers import Sam2Config, Sam2Model

    torch.manual_seed(seed)
    return Sam2Model(Sam2Config()).eval()                                    # the defaults are hiera-tiny
