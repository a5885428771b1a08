"""A small, hand-checked usage data set shared by the metering and dashboard tests.

Eight requests over four hours (2026-01-01 00:00 UTC onwards, the third hour empty): two keys,
three sessions, a cheap and a strong model behind two endpoints, one error, one hedge, two
failovers. The expected numbers in the tests were worked out by hand from this table.
"""

from __future__ import annotations

from gonka_mux.metering import Prices, UsageRecord

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

PRICES = Prices.from_dict(
    {
        "cheap-8b": {"prompt": 0.1, "completion": 0.4},
        "strong-k2": {"prompt": 1.0, "completion": 4.0},
    }
)

# "-" is None; flags: h = hedged, f = failed over.
TABLE = """
offset key   session model     served    tier   endpoint prompt compl reason latency ttft status flags tries
0      alice s1      auto      cheap-8b  cheap  node-a   100    50    0      0.5     0.1  ok     -     1
600    alice s1      auto      strong-k2 strong node-b   1000   500   200    2.0     0.4  ok     h     2
1200   bob   s2      auto      cheap-8b  cheap  node-a   200    100   0      0.7     0.2  ok     f     2
3700   bob   s2      strong-k2 -         strong node-b   2000   1000  400    4.0     0.8  ok     -     1
3800   alice s3      auto      cheap-8b  cheap  node-a   300    150   0      0.9     -    ok     -     1
10900  bob   s3      auto      strong-k2 strong node-b   500    0     0      1.0     -    error  f     3
10950  alice s1      auto      cheap-8b  cheap  node-b   400    200   0      0.6     0.15 ok     -     1
11000  -     -       strong-k2 -         -      node-a   50     25    0      1.5     -    ok     -     1
"""  # noqa: E501


def usage_records(*, priced: bool = True) -> list[UsageRecord]:
    lines = TABLE.strip().splitlines()
    names = lines[0].split()
    records = []
    for i, line in enumerate(lines[1:]):
        row = {n: (None if v == "-" else v) for n, v in zip(names, line.split(), strict=True)}
        flags = row["flags"] or ""
        record = UsageRecord(
            model=row["model"],
            time=T0 + float(row["offset"]),
            request_id=f"req-{i + 1}",
            key=row["key"],
            session_id=row["session"],
            served_model=row["served"],
            tier=row["tier"],
            tiering_reason="keyword 'classify'" if row["tier"] == "cheap" else None,
            endpoint=row["endpoint"],
            attempts=int(row["tries"]),
            prompt_tokens=int(row["prompt"]),
            completion_tokens=int(row["compl"]),
            reasoning_tokens=int(row["reason"]),
            latency=float(row["latency"]),
            ttft=None if row["ttft"] is None else float(row["ttft"]),
            status=row["status"],
            error="APIConnectionError: connection reset" if row["status"] == "error" else None,
            hedged="h" in flags,
            failed_over="f" in flags,
        )
        if priced:
            record.cost = PRICES.cost(
                record.effective_model, record.prompt_tokens, record.completion_tokens
            )
        records.append(record)
    return records
