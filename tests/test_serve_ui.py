"""`onerec serve`'s page (/ui) and its JSON endpoints, and the per-request `exclude_seen` and `model` of /recommend,
over the tiny trained run of test_serve.py (with simulated covers rendered into RUN/data/covers)."""

from __future__ import annotations

import base64
import copy
import hashlib
import re

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("PIL")

from fastapi.testclient import TestClient

from onerec.baselines import ItemTransitions, MostPopular
from onerec.data.schema import Dataset
from onerec.data.simulator import World
from onerec.data.splits import load_splits
from onerec.pipeline import recommend_users, sample_rows
from onerec.serve import MODELS, TRANSITIONS_VALID_ROWS, Query, RecommendService, create_app, item_covers
from test_serve import run  # noqa: F401  (the module's tiny trained run, reused)

K = 5


@pytest.fixture(scope="module")
def service(run):  # noqa: F811
    path, cfg = run
    data = path / "data"
    World.load(data / "world").render_covers(Dataset.load(data, validate=False).items, data / "covers",
                                             relative_to=data)  # as the vlm content backend does
    return RecommendService(path, cfg)


@pytest.fixture
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def history_of(service, user_id: str) -> list[int]:
    u = service.user_index[user_id]
    return service.seq.items[service.seq.offsets[u]:service.seq.offsets[u + 1]].tolist()


def users_with_history(service, n: int, min_len: int = 1, max_len: int = 50) -> list[str]:
    """The first ``n`` users whose stored history has ``min_len``..``max_len`` items (serve.max_history is 50)."""
    return [u for u in service.user_ids if min_len <= len(history_of(service, u)) <= max_len][:n]


def test_the_page_is_one_self_contained_file_with_a_strict_csp(client):
    r = client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page, csp = r.text, r.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    for tag in ("script", "style"):  # the inline script and style run by their hashes, nothing else does
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    assert not re.search(r"https?://|//cdn|@import|<script [^>]*src", page)  # no CDN, fonts or remote scripts
    assert "innerHTML" not in page and "outerHTML" not in page and "insertAdjacentHTML" not in page
    assert 'path="/ui"' in client.get("/metrics").text


def test_models_users_and_a_users_stored_history(service, client):
    models = client.get("/ui/models").json()
    assert [m["name"] for m in models["models"]] == list(MODELS)
    assert models["compare"] == ["onerec_generator", "onerec_prior", "popular", "transitions"]
    assert models["not_served"][0]["name"] == "sasrec" and "minutes" in models["not_served"][0]["why"]
    assert models["exclude_seen"] is False and models["max_k"] == 20 and models["covers"] is True
    users = client.get("/ui/users", params={"limit": 7}).json()
    assert len(users["users"]) == 7 and users["total"] == len(service.user_ids)
    for u in users["users"]:
        assert u["history_length"] == len(history_of(service, u["user_id"])) > 0
    for bad in ("0", "1001", "x", "5.0", "true", "+5", "-1", "", "1e2"):
        assert client.get("/ui/users", params={"limit": bad}).status_code == 422, bad
    user = users["users"][1]["user_id"]
    hist = client.get("/ui/history", params={"user_id": user, "limit": 3}).json()
    expected = history_of(service, user)
    assert hist["history_length"] == len(expected)
    assert [it["item_index"] for it in hist["history"]] == expected[-3:]
    for it in hist["history"]:
        i = it["item_index"]
        assert it["item_id"] == service.item_ids[i] and it["title"] == service.titles[i]
        assert it["semantic_id"] == service.rec.codes[i].tolist() and it["cover"] == f"/ui/cover/{i}"
    assert client.get("/ui/history", params={"user_id": "nobody-xyz"}).status_code == 404
    assert client.get("/ui/history").status_code == 422


def test_compare_ranks_one_history_by_each_model_as_each_model_does(run, service, client):  # noqa: F811
    path, cfg = run
    user = users_with_history(service, 1, min_len=5)[0]
    r = client.post("/ui/compare", json={"user_id": user, "k": K})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exclude_seen"] is False and body["history_length"] == len(history_of(service, user))
    assert [it["item_index"] for it in body["history"]] == history_of(service, user)[-50:]
    cols = {c["model"]: c for c in body["columns"]}
    assert list(cols) == ["onerec_generator", "onerec_prior", "popular", "transitions"]
    got = {m: [it["item_index"] for it in c["items"]] for m, c in cols.items()}
    for m, c in cols.items():
        assert len(got[m]) == K == len(set(got[m])), m
        scores = [it["score"] for it in c["items"]]
        assert scores == sorted(scores, reverse=True), m
        for it in c["items"]:
            i = it["item_index"]
            assert (it["item_id"], it["title"], it["semantic_id"]) == (service.item_ids[i], service.titles[i],
                                                                      service.rec.codes[i].tolist())
    # each column is that model's own answer: the CLI path with and without the prior, the baselines refitted here
    assert got["onerec_generator"] == [i for i, _, _ in recommend_users(path, cfg, [user], K)[user]]
    with_prior = copy.deepcopy(cfg)
    with_prior.generate.succession_prior = service.prior_weight
    assert got["onerec_prior"] == [i for i, _, _ in recommend_users(path, with_prior, [user], K)[user]]
    splits = load_splits(path / "data" / "split", n_items=service.n_items)
    ex = pa.table({"history": pa.array([history_of(service, user)], type=pa.list_(pa.int64()))})
    pop, trans = MostPopular(), ItemTransitions()
    pop.fit(splits["train"], n_items=service.n_items)
    trans.fit(splits["train"], n_items=service.n_items,
              valid=sample_rows(splits["valid"], TRANSITIONS_VALID_ROWS, cfg.train.seed))
    assert got["popular"] == pop.recommend(ex, K)[0].tolist()
    assert [it["score"] for it in cols["popular"]["items"]] == pop.counts[got["popular"]].tolist()
    assert got["transitions"] == trans.recommend(ex, K)[0].tolist()
    # /recommend's model field gives the same columns; its default is the run as configured (here: no prior)
    for m in (*cols, "onerec"):
        one = client.post("/recommend", json={"user_id": user, "k": K, "model": m}).json()
        assert one["model"] == m and [it["item_index"] for it in one["items"]] == got.get(m, got["onerec_generator"])
    assert client.post("/recommend", json={"user_id": user, "k": K}).json()["model"] == "onerec"
    # a pasted history of the dataset's ids is the same request as the user's stored history
    pasted = client.post("/ui/compare", json={"history": [service.item_ids[i] for i in history_of(service, user)],
                                              "k": K, "models": ["popular", "transitions"]}).json()
    assert [[it["item_index"] for it in c["items"]] for c in pasted["columns"]] == [got["popular"],
                                                                                    got["transitions"]]


def test_exclude_seen_per_request_is_honoured_exactly_by_every_model(service, client):
    users = users_with_history(service, 4, min_len=8)
    by_popularity = client.post("/recommend", json={"user_id": users[0], "k": 20, "model": "popular"}).json()
    pasted = [it["item_id"] for it in by_popularity["items"][:10]]  # the most popular items: popular repeats them
    requests = [{"user_id": u} for u in users] + [{"history": pasted}]
    overlap = 0
    for req in requests:
        hist = set(history_of(service, req["user_id"])) if "user_id" in req else set(service.item_indices(pasted))
        for exclude in (False, True):
            r = client.post("/ui/compare", json={**req, "k": 20, "exclude_seen": exclude, "models": list(MODELS)})
            assert r.status_code == 200, r.text
            assert r.json()["exclude_seen"] is exclude
            for col in r.json()["columns"]:
                items = [it["item_index"] for it in col["items"]]
                assert len(items) == 20 == len(set(items)), (col["model"], req)
                if exclude:
                    assert not hist & set(items), (col["model"], req)
                else:
                    overlap += len(hist & set(items))
            one = client.post("/recommend", json={**req, "k": 20, "exclude_seen": exclude, "model": "onerec_prior"})
            assert one.json()["exclude_seen"] is exclude
            assert not exclude or not hist & {it["item_index"] for it in one.json()["items"]}
    assert overlap > 0  # without exclusion the history does come back, so the check above can fail


def test_exclude_seen_leaves_min_k_items_when_the_history_covers_most_of_the_catalogue(service):
    rest = [3, 77, 150]
    history = [i for i in range(service.n_items) if i not in rest]
    qs = [service.history_query(history, 10, model=m, exclude_seen=True) for m in MODELS]
    for m, (items, scores) in zip(MODELS, service.recommend(qs)):
        assert sorted(items) == rest and len(scores) == 3, m
    user = users_with_history(service, 1, min_len=5)[0]
    known = service.recommend([service.user_query(user, 20, m, True) for m in MODELS])
    assert all(len(items) == 20 and not set(items) & set(history_of(service, user)) for items, _ in known)


def test_exclude_seen_defaults_to_generate_exclude_seen_and_is_strict(run, service):  # noqa: F811
    cfg = copy.deepcopy(run[1])
    cfg.generate.exclude_seen = True
    user = users_with_history(service, 1, min_len=8)[0]
    with TestClient(create_app(service, cfg)) as c:
        assert c.get("/ui/models").json()["exclude_seen"] is True
        for m in ("onerec", "popular"):
            r = c.post("/recommend", json={"user_id": user, "k": 20, "model": m}).json()
            assert r["exclude_seen"] is True and len(r["items"]) == 20
            assert not {it["item_index"] for it in r["items"]} & set(history_of(service, user))
        assert c.post("/recommend", json={"user_id": user, "exclude_seen": False}).json()["exclude_seen"] is False
        for bad in ("true", 1, 0, None):
            r = c.post("/recommend", json={"user_id": user, "exclude_seen": bad})
            assert r.status_code == (200 if bad is None else 422), (bad, r.text)


@pytest.mark.parametrize(("payload", "status", "needle"), [
    ({"user_id": "sim_u1", "models": []}, 422, "models"),
    ({"user_id": "sim_u1", "models": ["sasrec"]}, 422, "models.0"),
    ({"user_id": "sim_u1", "models": ["popular", "popular"]}, 422, "names a model twice"),
    ({"user_id": "sim_u1", "model": "popular"}, 422, "model"),  # compare takes 'models'
    ({"user_id": "nobody-xyz"}, 404, "unknown user_id"),
    ({"user_id": "sim_u1", "k": 21}, 422, "less than or equal to 20"),
    ({"user_id": "sim_u1", "k": "5"}, 422, "k: Input should be a valid integer"),
    ({"history": ["nope"]}, 422, "unknown item id 'nope'"),
    ({"history": []}, 422, "'history' is empty"),
    ({"history_index": list(range(51))}, 422, "at most 50"),
    ({"k": 3}, 422, "exactly one of"),
])
def test_compare_validates_like_recommend(client, payload, status, needle):
    r = client.post("/ui/compare", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert client.post("/recommend", json={"user_id": "sim_u1", "model": "sasrec"}).status_code == 422


def test_compare_goes_through_the_body_limit_the_queue_and_the_deadline(run, service):  # noqa: F811
    with TestClient(create_app(service)) as c:
        assert c.post("/ui/compare", content=b'{"user_id": "sim_u1", "k": 2, "k": 3}',
                      headers={"content-type": "application/json"}).status_code == 400
        assert c.post("/ui/compare", json={"history_index": [1] * 5000}).status_code == 413  # serve.max_body_bytes
        assert c.post("/ui/compare", json={"user_id": "sim_u1", "k": 3}).status_code == 200
        text = c.get("/metrics").text
        assert 'onerec_requests_total{path="/ui/compare",status="200"} 1' in text
        assert 'path="/ui/compare",status="413"' in text and "onerec_batch_size_count" in text
    cfg = copy.deepcopy(run[1])
    cfg.serve.max_queue = 2  # four models are four queued searches: more than the queue holds
    with TestClient(create_app(service, cfg)) as c:
        r = c.post("/ui/compare", json={"user_id": "sim_u1", "k": 3})
        assert r.status_code == 503 and r.headers["retry-after"] == str(cfg.serve.retry_after_s)
        assert c.post("/ui/compare", json={"user_id": "sim_u1", "k": 3, "models": ["popular", "transitions"]}
                      ).status_code == 200  # the refused request left nothing in the queue
    cfg = copy.deepcopy(run[1])
    cfg.serve.request_timeout_ms = 300
    with TestClient(create_app(service, cfg)) as c, service.lock:  # every search waits for the lock
        assert c.post("/ui/compare", json={"user_id": "sim_u1", "k": 3}).status_code == 504


def test_covers_come_only_from_the_items_table_and_only_from_inside_run_data(tmp_path):
    data = tmp_path / "run" / "data"
    (data / "covers").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n fake"
    (data / "covers" / "ok.png").write_bytes(png)
    (data / "covers" / "notes.txt").write_text("not an image")
    (tmp_path / "secret.png").write_bytes(png)  # outside RUN/data
    (data / "covers" / "link.png").symlink_to(tmp_path / "secret.png")
    (data / "covers" / "dirlink").symlink_to(tmp_path)
    paths = ["covers/ok.png", "../secret.png", str(tmp_path / "secret.png"), "covers/link.png",
             "covers/dirlink/secret.png", "covers/../../secret.png", str(data / "covers" / "ok.png"),
             "covers/notes.txt", "covers/missing.png", None, "", "covers", "covers/ok.png\x00.png"]
    items = pa.table({"raw_id": [str(i) for i in range(len(paths))], "cover": paths})
    got = item_covers(items, data, "cover")
    ok = (data / "covers" / "ok.png").resolve()
    assert got == [ok, None, None, None, None, None, ok] + [None] * 6
    assert item_covers(items, data, "image") == [None] * len(paths)  # no such column: no covers
    # paths relative to content.media_root still have to end inside RUN/data
    assert item_covers(pa.table({"cover": ["ok.png", "secret.png"]}), data, "cover", data / "covers") == [ok, None]
    assert item_covers(pa.table({"cover": ["secret.png"]}), data, "cover", tmp_path) == [None]


def test_the_cover_route_serves_listed_files_inside_run_data_only(service, client, tmp_path):
    i = int(np.flatnonzero([c is not None for c in service.covers])[0])
    r = client.get(f"/ui/cover/{i}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == service.covers[i].read_bytes() and r.content.startswith(b"\x89PNG")
    assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("-1", str(service.n_items), "99999999999999999999", "abc", "..%2F..%2Fetc%2Fpasswd",
                "%2Fetc%2Fpasswd", "1.png"):
        assert client.get(f"/ui/cover/{bad}").status_code in (404, 422), bad
    assert client.get("/ui/cover/../../etc/passwd").status_code == 404
    # a cover swapped for a link out of RUN/data after start-up is refused: the path is checked on every request
    listed = service.covers[i]
    (tmp_path / "outside.png").write_bytes(b"\x89PNG secret")
    saved = listed.read_bytes()
    listed.unlink()
    listed.symlink_to(tmp_path / "outside.png")
    try:
        assert client.get(f"/ui/cover/{i}").status_code == 404
    finally:
        listed.unlink()
        listed.write_bytes(saved)
    assert client.get(f"/ui/cover/{i}").status_code == 200
    assert 'path="/ui/cover",status="404"' in client.get("/metrics").text


def test_known_and_history_queries_keep_their_model_and_exclude_flag(service):
    q = service.user_query("sim_u1", 3, "transitions", True)
    assert isinstance(q, Query) and (q.model, q.exclude_seen, q.user) == ("transitions", True, 1)
    q = service.history_query([1, 2], 3, model="popular", exclude_seen=True)
    assert (q.model, q.exclude_seen, q.user) == ("popular", True, None)
