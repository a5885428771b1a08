"""Auto-discovery: what the network reports, and registration driven by environment variables.

``discover()`` reads ``/v1/epochs/current/participants`` from the first source that answers,
drops excluded participants and those missing from the Transfer Agent allowlist, and indexes
the rest by model. ``register_gonka_models`` does the same, then registers one signed endpoint
per participant per model (weight = the participant's PoC weight) and follows epoch changes.

Settings come from arguments, then a GonkaConfig, then GONKA_* environment variables; here the
environment is passed as a dict to keep the example self-contained.

Run: python examples/gonka_auto_discovery.py
"""

from gonka_mux import Multiplexer
from gonka_mux.gonka import RequestSigner, discover, register_gonka_models
from gonka_mux.testing.fake_gonka import FakeGonkaNetwork

MODELS = ["Qwen/Fake-7B", "Other/Fake-1B"]
KEY = "22" * 32  # a throwaway key for the fake chain


def main() -> None:
    with FakeGonkaNetwork(
        n_participants=4,
        participant_models=[MODELS, MODELS[:1], MODELS[1:], MODELS],
        weights=[100, 200, 300, 400],
    ) as net:
        net.add_account(RequestSigner(KEY))
        p = net.participants
        net.set_allowlist([p[0].address, p[1].address, p[2].address])  # p3 may not act as TA
        net.exclude(p[2].address, reason="downtime")  # excluded this epoch

        found = discover(net.source_url)
        print(f"epoch {found.epoch_id}, phase {found.phase}, from {found.source_url}")
        print(f"usable: {len(found.participants)}, excluded: {dict(found.excluded)}")
        print(f"not on the TA allowlist: {list(found.not_allowlisted)}")
        for model in found.models:
            print(f"  {model}: {[x.address[:12] for x in found.for_model(model)]}")

        environ = {
            "GONKA_SOURCE_URL": f"http://127.0.0.1:9,{net.source_url}",  # failover list
            "GONKA_PRIVATE_KEY": KEY,
            "GONKA_MAX_TOKENS": "128",
            "GONKA_REFRESH_INTERVAL": "30",
        }
        with Multiplexer() as mux:
            result = register_gonka_models(mux, environ=environ)
            print(f"\nregistered {result.models_registered} from {result.source_url}")
            print(f"refresh: {result.refresh_manager}")
            for model in result.models_registered:
                reply = mux.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}]
                )
                print(f"  {model} -> {reply.choices[0].message.content}")
        assert {r.json["max_tokens"] for r in net.inference_requests} == {128}


if __name__ == "__main__":
    main()
