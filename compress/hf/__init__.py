"""Hugging Face transformers as teachers and students: local folders only, never a hub.

- `model`: `hf:DIR` (or `hf:package:PKG/SUB`, a folder inside an installed Python package) to a TextModel, an
  nn.Module whose forward takes the tokenizer's keyword inputs and returns logits or a pooled sentence embedding;
  students cut from a teacher (`from_teacher`), or from a config with overrides.
- `text`: `text:PATH` data (.txt / .csv / .tsv / .jsonl), tokenized once, as Datasets of dict inputs.
- `losses`, `metrics`: the embedding task (MSE / cosine on pooled embeddings, hidden-state and attention KD;
  `cosine` and `neighbour_overlap@10`).

`transformers` is the optional extra `compress[hf]`; everything here imports it inside functions.
"""
