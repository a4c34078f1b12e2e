from agentark_utils import models


def test_offline_model_provisions_to_a_fast_loading_directory(tmp_path):
    out = models.provision(tmp_path / "smollm2")
    assert (out / "model.safetensors").stat().st_size > 500e6  # float32, dequantized
    assert not (tmp_path / "smollm2.partial").exists()
    config = (out / "config.json").read_text()
    assert "quantization_config" not in config  # loads as a plain model, not re-quantized
    model, tokenizer = models.load_causal_lm(str(out), dtype="bfloat16", device="cpu")
    assert model.config.model_type == "llama" and tokenizer.padding_side == "left"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert models.resolve(str(out)) == str(out)
