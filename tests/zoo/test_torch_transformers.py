"""Neural models through their own MLflow flavors, each answer held to the loaded model's own
in-process prediction (issue 17, "Real models in the tests"):

- a PyTorch module (``mlflow.pytorch``) on a tensor signature, float32 ``(-1, 4)`` -> ``(-1, 2)``;
  it also takes 8 concurrent requests of different rows, each answer its own;
- a ``transformers`` text-classification pipeline (``mlflow.transformers``) of a tiny BERT built
  here from a config (random weights, the project's offline tokenizer; nothing from the Hub).
"""

from __future__ import annotations

import os
import random
from typing import Any

import httpx
import numpy as np
import pandas as pd

from tests.integration.conftest import ControllerHandle
from tests.zoo.conftest import Figures
from tests.zoo.held import (
    concurrently,
    first_answer,
    frame_diff,
    go_live,
    in_process,
    max_abs_diff,
    post_json,
    predict_calls,
)

REQUESTS = 8
# torch on CPU, one process and another, same library and machine: same float32 kernels.
TOLERANCE = 1e-6
# What this machine has on disk; an unpinned torch requirement would pull a CUDA build.
TORCH_PINS = ["torch==2.13.0"]


def test_a_pytorch_module_on_a_tensor_signature_answers_what_it_predicts_in_process(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    name = "zoo_pytorch"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                     torch.nn.Linear(8, 2)).eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2))]),
    )
    example = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(module, name="model", signature=signature,
                                        input_example=example, pip_requirements=TORCH_PINS,
                                        registered_model_name=name)
    version = str(info.registered_model_version)
    born = go_live(ctl, name, version, figures)
    model = in_process(name, version)

    rows = [[0.1, -0.2, 0.3, 0.4], [1.5, 0.0, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    expected = model.predict(np.asarray(rows, dtype=np.float32))
    first = first_answer(serving_url, f"/models/{name}/serve", born, figures,
                         post_json({"inputs": rows}))
    assert first.status_code == 200, first.text
    served = max_abs_diff(first.json(), expected)
    figures("max |served - in-process| on /serve", served, "")
    assert served <= TOLERANCE

    scored = httpx.post(f"{serving_url}/models/{name}/invocations", json={"inputs": rows},
                        timeout=30)
    assert scored.status_code == 200, scored.text
    assert max_abs_diff(scored.json()["predictions"], expected) <= TOLERANCE

    draw = random.Random(4)
    bodies = [{"inputs": [[round(draw.uniform(-3, 3), 4) for _ in range(4)]
                          for _ in range(draw.randint(1, 3))]} for _ in range(REQUESTS)]
    calls = predict_calls(name, version)
    answers = concurrently(f"{serving_url}/models/{name}/serve", bodies)
    figures(f"predict calls for {REQUESTS} concurrent requests",
            predict_calls(name, version) - calls, "")
    worst = 0.0
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        alone = model.predict(np.asarray(body["inputs"], dtype=np.float32))
        worst = max(worst, max_abs_diff(answer.json(), alone))
    figures(f"max |served - in-process| over {REQUESTS} concurrent requests", worst, "")
    assert worst <= TOLERANCE


def _tiny_classifier() -> Any:
    """A text-classification pipeline of a 2-layer BERT with random weights, built offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from sigserve.demo.tiny_t5 import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
        # Wider than BERT's default init, so that the three scores differ from one text to
        # another rather than all sitting near 1/3.
        initializer_range=0.5,
        id2label={0: "low", 1: "mid", 2: "high"}, label2id={"low": 0, "mid": 1, "high": 2},
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config).eval()
    return transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)


def test_a_transformers_pipeline_answers_what_it_predicts_in_process(
    serving_url: str, ctl: ControllerHandle, figures: Figures
) -> None:
    import mlflow.transformers

    name = "zoo_transformers"
    with mlflow.start_run():
        info = mlflow.transformers.log_model(
            _tiny_classifier(), name="model", input_example=["the weather is fine"],
            # MLflow's inferred list names torchvision, which this environment lacks.
            pip_requirements=["transformers==5.24.0", *TORCH_PINS],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    born = go_live(ctl, name, version, figures)
    model = in_process(name, version)

    texts = ["hello world", "the river runs by the old mill", "bye"]
    expected = model.predict(texts)
    assert isinstance(expected, pd.DataFrame) and list(expected.columns) == ["label", "score"]
    first = first_answer(serving_url, f"/models/{name}/serve", born, figures, post_json(texts))
    assert first.status_code == 200, first.text
    served = frame_diff(first.json(), expected)
    figures("max |served - in-process| on /serve (score)", served, "")
    assert served <= TOLERANCE

    scored = httpx.post(f"{serving_url}/models/{name}/invocations", json={"inputs": texts},
                        timeout=30)
    assert scored.status_code == 200, scored.text
    assert frame_diff(scored.json()["predictions"], expected) <= TOLERANCE
