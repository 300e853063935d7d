"""Real-size Qwen-VL architectures, randomly initialised, for measuring speed and memory without a
download (`vlm-recipes benchmark --config real-size`). The shapes are those of the published
checkpoints' config.json; the weights are noise, so only throughput and memory mean anything."""

from __future__ import annotations

from transformers import AutoConfig

MROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653)

REAL_SIZE = {
    # name: (model_type, text config, vision config, tie_word_embeddings, published parameter count)
    "qwen2-vl-2b": ("qwen2_vl",
                    dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936),
                    dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2), True, 2.21e9),
    "qwen2.5-vl-3b": ("qwen2_5_vl",
                      dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                           num_key_value_heads=2, vocab_size=151936),
                      dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"), True, 3.75e9),
    "qwen2-vl-7b": ("qwen2_vl",
                    dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064),
                    dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2), False, 8.29e9),
}


def real_size_config(name: str):
    """The transformers config of one of REAL_SIZE's architectures."""
    model_type, text, vision, tied, _ = REAL_SIZE[name]
    text = dict(text, rope_parameters=dict(MROPE), max_position_embeddings=32768, rms_norm_eps=1e-6)
    return AutoConfig.for_model(model_type, text_config=text, vision_config=vision, tie_word_embeddings=tied,
                                **TOKEN_IDS)
