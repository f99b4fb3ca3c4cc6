"""HTTP routes of the web page, mixed into the Ingress: the page and its assets at `/`, the page's
API under /v1/page/ (pairs to ask, text for a person), and two profile routes the page needs
(the inferred persona; deleting one preference).

The page itself is static (fspo_ray/serving/static/, no CDN, no network): it talks to the same
JSON API as any client, so /v1 auth, limits and errors apply to it unchanged.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotations.
import asyncio
import re
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response

from fspo_ray.serving.errors import APIError
from fspo_ray.serving.schemas import USER_ID_PATTERN, Strict, Text
from fspo_ray.serving.store import delete_one_preference

ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere and runs no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class QuestionRequest(Strict):
    question: Text


class DisplayRequest(Strict):
    question: Text  # as the model read it
    text: str  # the model's answer


def asset(name: str) -> bytes:
    return resources.files("fspo_ray.serving").joinpath("static", name).read_bytes()


def _user(user_id: str) -> str:
    if not re.fullmatch(USER_ID_PATTERN, user_id):
        raise APIError(400, "user_id: must be 1-128 characters of letters, digits and . _ : @ -, starting with a "
                       "letter or digit", code="invalid_value", param="user_id")
    return user_id


def page_routes(api: FastAPI) -> type:
    """A base class for the Ingress whose methods are the page's routes on `api`."""

    class PageRoutes:
        def _page(self):
            if self.page is None:
                raise APIError(404, "the page is off (page.enabled: false)", code="not_found")
            return self.page

        def _check_chars(self, value: str, param: str) -> None:
            limit = self.cfg.limits.max_text_chars
            if len(value) > limit:
                raise APIError(400, f"{param} has {len(value)} characters; the limit is {limit} "
                               "(limits.max_text_chars)", code="string_too_long", param=param)

        # ------------------------------------------------------------------ the page

        @api.get("/")
        async def index(self):
            self._page()
            return Response(asset("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

        @api.get("/favicon.ico")
        async def favicon(self):
            return Response(status_code=204)  # browsers ask for it on any page; there is none

        @api.get("/static/{name}")
        async def static(self, name: str):
            self._page()
            if name not in ASSETS:  # a fixed list: no path ever reaches the file system
                raise APIError(404, f"no asset {name!r}", code="not_found")
            return Response(asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

        # ------------------------------------------------------------------ the page's API

        @api.get("/v1/page/info")
        async def page_info(self) -> dict:
            if self.baseline is not None:
                unpersonalized = "the base model, from the question alone"
            else:
                unpersonalized = "the answer model, from the question alone"
            return self._page().info(self.cfg.model_id, unpersonalized)

        @api.get("/v1/page/next/{user_id}")
        async def page_next(self, user_id: str, skipped: str = "") -> dict:
            page = self._page()
            stored = await asyncio.to_thread(self.store.get_preferences, _user(user_id))
            return page.next_pair(user_id, stored, [s for s in skipped.split(",") if s][:256])

        @api.get("/v1/page/profile/{user_id}")
        async def page_profile(self, user_id: str) -> dict:
            page = self._page()
            stored = await asyncio.to_thread(self.store.get_preferences, _user(user_id))
            return {"user_id": user_id, "count": len(stored), "preferences": page.profile(stored)}

        @api.post("/v1/page/question")
        async def page_question(self, request: Request) -> dict:
            req = await self._read(request, QuestionRequest)
            self._check_chars(req.question, "question")
            return self._page().question(req.question)

        @api.post("/v1/page/display")
        async def page_display(self, request: Request) -> dict:
            req = await self._read(request, DisplayRequest)
            self._check_chars(req.question, "question")
            self._check_chars(req.text, "text")
            return {"text": self._page().display(req.question, req.text)}

        # ------------------------------------------------------------------ profile routes the page needs

        @api.get("/v1/users/{user_id}/persona")
        async def user_persona(self, user_id: str):
            """The persona the first stage infers from the stored preferences (the cache applies)."""
            self._ensure_sweeper()
            n = self.cfg.personalize.num_shots
            stored = await asyncio.to_thread(self.store.get_preferences, _user(user_id), n)
            if not stored:
                raise APIError(404, f"user {user_id!r} has no stored preferences", code="user_not_found",
                               param="user_id")
            persona, hit = await self._persona(user_id, tuple(stored))
            # `persona`: the model's own words (what the answer stage reads); `persona_display`: the
            # same as sentences for a person (a compact-world model writes "length: concise, ...").
            shown = persona if self.page is None else self.page.display_persona(persona)
            return {"user_id": user_id, "persona": persona, "persona_display": shown, "cache_hit": hit,
                    "preferences_used": len(stored)}

        @api.delete("/v1/users/{user_id}/preferences/{index}")
        async def delete_preference(self, user_id: str, index: int) -> dict:
            """Delete one stored preference (index as GET /v1/users/{id} lists them, 0 = oldest)."""
            _user(user_id)
            if index < 0:
                raise APIError(400, "index: must be >= 0", code="invalid_value", param="index")
            deleted = await asyncio.to_thread(delete_one_preference, self.store, user_id, index,
                                              self.cfg.limits.max_stored_preferences)
            if not deleted:
                raise APIError(404, f"user {user_id!r} has no preference {index}", code="preference_not_found",
                               param="index")
            self._deletion_epoch += 1
            self.cache.delete_user(user_id)  # a persona inferred with it must not outlive it
            stored = await asyncio.to_thread(self.store.get_preferences, user_id)
            return {"user_id": user_id, "deleted": True, "stored": len(stored)}

    return PageRoutes
