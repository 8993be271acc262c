"""What is specific to Hugging Face transformers (the hf: model family lives in compress.families.hf):

- `model`: local folders (`hf:DIR`, or `hf:package:PKG/SUB`, a folder inside an installed Python package) and
  their tokenizer; TextModel, an nn.Module whose forward takes the tokenizer's keyword inputs and returns logits or
  a pooled sentence embedding; the layer cut (`from_teacher`).
- `text`, `data`: `text:PATH` data (.txt / .csv / .tsv / .jsonl), tokenized once, as Datasets of token inputs.
- `losses`: hidden-state and attention KD through a layer map.
- `optimize`: ONNX Runtime's transformer optimizer, kept only where it measures faster.

`transformers` is the optional extra `hf` (`pip install -e '.[hf]'`); everything here imports it inside functions. Never a hub.
"""
