"""Shared by the examples: the OpenAI client pointed at a running Tandem (`tandem up`)."""

import argparse

from openai import OpenAI

MODEL = "SmolLM2-135M-Instruct"


def client() -> OpenAI:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    args = parser.parse_args()
    return OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=300)
