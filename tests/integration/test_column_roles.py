"""Every row scored and every column understood, through the CLI's default detectors against a
loopback API serving generated records."""

import json
import random
import re
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from demo_process import run_cli
from http_fixtures import api_server  # noqa: F401

SD = re.compile(r"\(([+-][0-9.]+) SD\)")
EPOCH_2024 = 1_704_067_200_000  # 2024-01-01T00:00:00Z in ms


def run(tmp_path: Path, run_id: str, url: str):
    args = ["run", "--config", "configs/any_api.yaml", "--quiet", "--run-id", run_id]
    for item in (
        f"source.url={url}",
        f"output.runs_dir={tmp_path / 'runs'}",
        f"output.reports_dir={tmp_path / 'reports'}",
        "processing.mode=native",
    ):
        args += ["--set", item]
    out = run_cli(*args, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "runs" / run_id
    return (
        run_dir,
        json.loads((run_dir / "results.json").read_text()),
        pd.read_csv(run_dir / "anomalies.csv"),
        (run_dir / "report.html").read_text(),
    )


def sensor_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "station": f"S{rng.randrange(8)}",
            "time": EPOCH_2024 + i * 60_000,
            "temp": round(rng.gauss(20, 2), 3),
            "load": round(rng.gauss(50, 5), 3),
        }
        for i in range(n)
    ]


def test_thirty_copies_of_an_absurd_record_are_all_flagged_and_listed(api_server, tmp_path):  # noqa: F811
    rows = sensor_records(3_000, 1)
    absurd = {"station": "S1", "time": EPOCH_2024 + 77 * 60_000, "temp": 480.0, "load": 910.0}
    served = rows[:1_500] + [dict(absurd) for _ in range(30)] + rows[1_500:]
    api_server.json("/sensors", served)
    run_dir, results, anomalies, report = run(tmp_path, "copies", api_server.url("/sensors"))

    assert results["rows"]["ingested"] == results["rows"]["scored"] == 3_030
    assert results["rows"]["duplicates"] >= 29 and results["rows"]["duplicates_flagged"] >= 29
    copies = anomalies[(anomalies["temp"] == 480.0) & (anomalies["load"] == 910.0)]
    assert len(copies) == 30, f"{len(copies)} of the 30 copies flagged"
    assert sorted(copies["row"]) == list(range(1_500, 1_530))  # each line traces to its own record
    assert re.search(r"[\d,]+ duplicate rows \(\d+ of them flagged\)", report)

    assert "time" not in results["features"]  # epoch ms: a timestamp, never a raw feature
    summary = json.loads((run_dir / "data_summary.json").read_text())
    assert summary["roles"]["time"] == {
        "role": "timestamp",
        "reason": "epoch ms under a time-like name",
        "unit": "ms",
    }
    assert summary["roles"]["station"]["role"] == "categorical"
    assert "2024-01-01T01:17:00+00:00" in report  # the copies' epoch time shown as ISO text
    assert str(absurd["time"]) not in report


def taxi_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pickup = datetime(2024, 3, 1) + timedelta(seconds=rng.randrange(30 * 86_400))
        minutes = rng.gammavariate(2.0, 7.0)
        distance = round(minutes * rng.uniform(0.15, 0.35), 2)
        rows.append(
            {
                "trip_id": f"t{i:05d}",
                "tpep_pickup_datetime": pickup.isoformat(sep=" "),
                "tpep_dropoff_datetime": (pickup + timedelta(minutes=minutes)).isoformat(sep=" "),
                "trip_distance": distance,
                "RatecodeID": rng.choices([1, 2, 5], weights=[90, 7, 3])[0],
                "PULocationID": rng.randrange(1, 264),
                "payment_type": rng.choices([1, 2, 3, 4], weights=[70, 27, 2, 1])[0],
                "fare_amount": round(3 + 2.5 * distance + rng.gauss(0, 1), 2),
            }
        )
    long_trip = rows[1_234]
    pickup = datetime.fromisoformat(long_trip["tpep_pickup_datetime"])
    long_trip.update(
        tpep_dropoff_datetime=(pickup + timedelta(hours=20)).isoformat(sep=" "),
        trip_distance=1.2,
        fare_amount=9.0,
    )
    rows[2_000]["RatecodeID"] = 99
    return rows


def test_taxi_trips_durations_codes_and_explanations(api_server, tmp_path):  # noqa: F811
    api_server.json("/trips", {"data": taxi_records(3_000, 2)})
    run_dir, results, anomalies, report = run(tmp_path, "taxi", api_server.url("/trips"))

    summary = json.loads((run_dir / "data_summary.json").read_text())
    roles = {name: role["role"] for name, role in summary["roles"].items()}
    assert roles["RatecodeID"] == roles["payment_type"] == roles["PULocationID"] == "categorical"
    assert roles["tpep_pickup_datetime"] == roles["tpep_dropoff_datetime"] == "timestamp"
    assert roles["trip_id"] == "identifier" and roles["fare_amount"] == "measure"
    duration = "duration tpep_pickup_datetime → tpep_dropoff_datetime"
    assert duration in results["features"]

    long_trip = anomalies[anomalies["trip_id"] == "t01234"]
    assert len(long_trip) == 1, "the 20-hour, 1.2-mile trip is not flagged"
    assert long_trip["explanation"].iloc[0].startswith(f"{duration} ↑ 20 h vs median ")

    for text in anomalies["explanation"]:
        for phrase in text.split("; "):
            if phrase.startswith(("RatecodeID", "payment_type", "PULocationID")):
                assert "SD" not in phrase and "rare value" in phrase, phrase
            for z in SD.findall(phrase):
                assert abs(float(z)) <= 100, phrase  # the spread is floored: no z from a spread of ~0
        assert "1e5" not in text
    shown = pd.Timestamp(long_trip["tpep_pickup_datetime"].iloc[0]).isoformat()  # naive local time
    assert shown in report and f"{shown}+00:00" not in report  # shown as ISO text, never labelled UTC


SHARED_API = Path(__file__).resolve().parents[3] / "shared" / "data" / "api"


def serve_shared(server, path: str, name: str) -> str:
    if not (SHARED_API / name).exists():
        pytest.skip(f"shared API data not found at {SHARED_API}")
    server.route(path, (200, {"Content-Type": "application/json"}, (SHARED_API / name).read_bytes()))
    return server.url(path)


def explanation_phrases(anomalies: pd.DataFrame) -> list[str]:
    return [phrase for text in anomalies["explanation"] for phrase in text.split("; ")]


def test_recorded_usgs_week_epoch_times_missing_fields_and_codes(api_server, tmp_path):  # noqa: F811
    url = serve_shared(api_server, "/quakes.geojson", "usgs_earthquakes_all_week_2019.geojson")
    run_dir, results, anomalies, report = run(tmp_path, "usgs", url)
    summary = json.loads((run_dir / "data_summary.json").read_text())
    roles = {name: role["role"] for name, role in summary["roles"].items()}
    assert roles["properties.time"] == roles["properties.updated"] == "timestamp"
    assert not {"properties.time", "properties.updated"} & set(results["features"])
    assert roles["properties.tsunami"] == "boolean" and roles["properties.magType"] == "categorical"
    assert "properties.felt missing" in results["features"]  # felt is missing in most rows
    felt = pd.read_parquet(run_dir / "flattened.parquet")["properties.felt"]
    for phrase in explanation_phrases(anomalies):
        if phrase.startswith(
            ("properties.magType", "properties.net", "properties.tsunami", "properties.status")
        ):
            assert "SD" not in phrase, phrase
        for z in SD.findall(phrase):
            assert abs(float(z)) <= 100, phrase
        if phrase.startswith("properties.felt ↑"):  # the median of the observed values, never of imputed ones
            median = float(phrase.split(" vs median ")[1].split(" ")[0].replace(",", ""))
            assert median == pytest.approx(felt.median(), rel=0.5)
    first = pd.Timestamp(
        pd.read_parquet(run_dir / "flattened.parquet")["properties.time"].iloc[0], unit="ms", tz="UTC"
    )
    assert first.isoformat() in report  # the preview shows epoch ms as ISO text


def test_recorded_taxi_trips_long_trip_and_codes(api_server, tmp_path):  # noqa: F811
    url = serve_shared(api_server, "/resource/taxi.json", "nyc_yellow_taxi_2019.json")
    run_dir, results, anomalies, _ = run(tmp_path, "taxi2019", url)
    summary = json.loads((run_dir / "data_summary.json").read_text())
    roles = {name: role["role"] for name, role in summary["roles"].items()}
    for code in ("ratecodeid", "payment_type", "pulocationid", "dolocationid", "vendorid"):
        assert roles[code] == "categorical", code
    duration = "duration tpep_pickup_datetime → tpep_dropoff_datetime"
    assert duration in results["features"]
    pickup = pd.to_datetime(anomalies["tpep_pickup_datetime"])
    dropoff = pd.to_datetime(anomalies["tpep_dropoff_datetime"])
    longest = (dropoff - pickup).dt.total_seconds().idxmax()
    assert (dropoff - pickup)[longest] > pd.Timedelta(hours=20)  # the day-long trip of the file is flagged
    assert f"{duration} ↑ " in anomalies.loc[longest, "explanation"]
    for phrase in explanation_phrases(anomalies):
        if phrase.startswith(("ratecodeid", "payment_type", "pulocationid", "dolocationid", "vendorid")):
            assert "SD" not in phrase and "rare value" in phrase, phrase
