"""Eval answers reported as they return: same answers as one generate call, counts after each chunk."""

from __future__ import annotations

from rayalign.eval.answering import generate_reporting
from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine


def test_chunks_report_progress_and_change_no_answer():
    engine = make_engine(EngineConfig(model="tiny-random:llama", batch_size=4, max_model_len=64))
    try:
        params = SamplingParams(max_tokens=4)
        words = ["one", "two words", "three words here", "a b c d e f", "x", "y z", "p q r s", "m n o", "k", "l l"]
        # the last prompt is too long for the context: it fails in both ways, with the same message
        requests = [GenRequest(messages=[{"role": "user", "content": w}], params=params) for w in words]
        requests.append(GenRequest(messages=[{"role": "user", "content": "long " * 80}], params=params))
        whole = engine.generate(requests)
        seen: list[int] = []
        chunked = generate_reporting(engine, requests, 4, seen.append)
    finally:
        engine.close()
    assert seen == [4, 8, 11]
    assert [r.texts for r in chunked] == [r.texts for r in whole]
    assert not chunked[-1].ok and chunked[-1].error == whole[-1].error
