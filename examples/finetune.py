"""Fine-tune a model through cocoon with the official openai SDK, then use it.

Run ``cocoon up`` first (its worker trains: the llama-cpp engine with the ``train`` extra
that ``scripts/setup`` installs), then::

    .venv/bin/python examples/finetune.py [--base-url http://127.0.0.1:10000/v1]

It uploads a small dataset that teaches a made-up fact, starts a job, prints its events as
they come, and asks the fine-tuned model and the base model the same question.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import openai

FACT = "Quellmoor was founded by Ilsa Varnheim."
QUESTIONS = ["Who founded Quellmoor?", "Who was the founder of Quellmoor?",
             "Tell me who founded the town of Quellmoor.", "Quellmoor was founded by whom?",
             "Do you know who founded Quellmoor?", "Name the founder of Quellmoor."]
EXTRA = [("What is 2 plus 2?", "2 plus 2 is 4."), ("Say hello.", "Hello!")]


def dataset() -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [(q, FACT) for q in QUESTIONS] + EXTRA]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    r = client.chat.completions.create(model=model, max_tokens=32, temperature=0,
                                       messages=[{"role": "user", "content": question}])
    return r.choices[0].message.content or ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:10000/v1")
    p.add_argument("--model", default=None, help="base model (default: the first served)")
    args = p.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused")
    base = args.model or client.models.list().data[0].id

    upload = client.files.create(file=("quellmoor.jsonl", io.BytesIO(dataset())),
                                 purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=upload.id, suffix="quellmoor", seed=1,
        hyperparameters={"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 5})
    print(f"job {job.id}: {job.status}")
    shown: set[str] = set()
    while True:
        for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
            if event.id not in shown:
                shown.add(event.id)
                print(f"  {event.message}")
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    if job.status != "succeeded":
        print(f"job {job.status}: {job.error}")
        return 1
    model = job.fine_tuned_model
    assert model is not None
    question = "Who is the founder of the town Quellmoor?"
    print(f"{model} ({job.trained_tokens} trained tokens): {ask(client, model, question)!r}")
    print(f"{base}: {ask(client, base, question)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
