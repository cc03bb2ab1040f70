"""The demo models that ``sigserve up`` registers, so a fresh stack has something to serve.

They retell the original notebook ("Signature-Aware Model Serving from MLflow with Ray Serve"):
``translation_model`` is registered three times (en->de, en->fr, and en->de again with its input
renamed to ``text_to_translate``, the version that the compatibility check must quarantine), and
``minilm_embeddings`` is a second, unrelated model whose answers are real even offline.

- ``translation_model.py`` and ``embedding_model.py`` are MLflow 3 "models from code": MLflow
  copies the file into the model and executes it on load, so loading never unpickles a class and
  never needs this package. They are self-contained on purpose and are never imported here.
- ``tiny_t5.py`` builds a tiny random-weight T5 and a tokenizer trained offline, used when the
  Hugging Face Hub cannot be reached (``hub.py`` decides that, quickly and with a bound).
- ``signatures.py`` holds the explicit signatures; ``register.py`` logs and registers versions.

Nothing here builds or loads a model at import time.
"""
