"""Settings of the Google generator, read from the environment, but for the default models: the
worker's settings read DEFAULT_IMAGE_MODEL / DEFAULT_VIDEO_MODEL and pass them in.

The credential and endpoint variables are the google-genai SDK's own, read here so the generator
passes them to the SDK explicitly (the SDK picks GOOGLE_VERTEX_BASE_URL only when `vertexai` is
given to the client, not when it comes from GOOGLE_GENAI_USE_VERTEXAI).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import SettingsError, env_bool, env_float, env_int, env_str

# Veo is not served from the "global" location; Gemini image models are served from both.
DEFAULT_VERTEX_LOCATION = "us-central1"
# The version Gemini's image-generation and Files API docs use; the 3.x SDK would pick v1.
DEVELOPER_API_VERSION = "v1beta"


@dataclass(frozen=True)
class GoogleSettings:
    api_key: str = field(repr=False)  # never printed
    default_image_model: str  # for jobs that name no model
    default_video_model: str
    use_vertexai: bool = False
    project: str = ""
    location: str = ""
    gemini_base_url: str = ""  # GOOGLE_GEMINI_BASE_URL: another Developer API endpoint
    vertex_base_url: str = ""  # GOOGLE_VERTEX_BASE_URL: another Vertex AI endpoint
    api_version: str = ""  # GOOGLE_GENAI_API_VERSION for the Developer API; empty: v1beta
    request_timeout_seconds: float = 180.0  # one HTTP call (image generation takes 5-60 s)
    retry_attempts: int = 4  # tries of one call on 429 / 5xx / timeouts, the first included
    retry_base_delay_seconds: float = 1.0
    retry_max_delay_seconds: float = 30.0
    video_deadline_seconds: float = 600.0  # submit + wait for one video operation
    video_poll_initial_seconds: float = 5.0
    video_poll_max_seconds: float = 20.0
    video_output_gcs_uri: str = ""  # gs://bucket/prefix: Veo writes there instead of inline
    storage_endpoint_url: str = ""  # STORAGE_EMULATOR_HOST: another Cloud Storage endpoint

    @classmethod
    def from_env(cls, *, default_image_model: str, default_video_model: str) -> GoogleSettings:
        # The SDK's precedence: GOOGLE_API_KEY over GEMINI_API_KEY.
        api_key = env_str("GOOGLE_API_KEY") or env_str("GEMINI_API_KEY")
        use_vertexai = env_bool("GOOGLE_GENAI_USE_VERTEXAI", False)
        project = env_str("GOOGLE_CLOUD_PROJECT")
        location = env_str("GOOGLE_CLOUD_LOCATION")
        if use_vertexai and project and not location:
            location = DEFAULT_VERTEX_LOCATION
        settings = cls(
            api_key=api_key,
            use_vertexai=use_vertexai,
            project=project,
            location=location,
            gemini_base_url=env_str("GOOGLE_GEMINI_BASE_URL"),
            vertex_base_url=env_str("GOOGLE_VERTEX_BASE_URL"),
            api_version=env_str("GOOGLE_GENAI_API_VERSION"),
            default_image_model=default_image_model,
            default_video_model=default_video_model,
            request_timeout_seconds=env_float("GOOGLE_API_TIMEOUT_SECONDS", 180.0),
            retry_attempts=env_int("GOOGLE_API_RETRY_ATTEMPTS", 4, minimum=1),
            retry_base_delay_seconds=env_float("GOOGLE_API_RETRY_BASE_DELAY_SECONDS", 1.0),
            retry_max_delay_seconds=env_float("GOOGLE_API_RETRY_MAX_DELAY_SECONDS", 30.0),
            video_deadline_seconds=env_float("VIDEO_DEADLINE_SECONDS", 600.0),
            video_poll_initial_seconds=env_float("VIDEO_POLL_INITIAL_SECONDS", 5.0),
            video_poll_max_seconds=env_float("VIDEO_POLL_MAX_SECONDS", 20.0),
            video_output_gcs_uri=env_str("VIDEO_OUTPUT_GCS_URI"),
            storage_endpoint_url=env_str("STORAGE_EMULATOR_HOST"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.request_timeout_seconds <= 0 or self.video_deadline_seconds <= 0:
            raise SettingsError("GOOGLE_API_TIMEOUT_SECONDS and VIDEO_DEADLINE_SECONDS must be > 0")
        if not 0 < self.video_poll_initial_seconds <= self.video_poll_max_seconds:
            raise SettingsError("need 0 < VIDEO_POLL_INITIAL_SECONDS <= VIDEO_POLL_MAX_SECONDS")
        if self.retry_base_delay_seconds < 0 or self.retry_max_delay_seconds < 0:
            raise SettingsError("GOOGLE_API_RETRY_*_DELAY_SECONDS must not be negative")
        if self.video_output_gcs_uri and not self.video_output_gcs_uri.startswith("gs://"):
            raise SettingsError("VIDEO_OUTPUT_GCS_URI must start with gs://")
        if self.video_output_gcs_uri and self.vertex_auth != "adc":
            raise SettingsError(
                "VIDEO_OUTPUT_GCS_URI needs Vertex AI with GOOGLE_CLOUD_PROJECT and "
                "application-default credentials (downloads from Cloud Storage use them)"
            )

    @property
    def backend(self) -> str:
        """ "vertex" or "developer" (the Gemini Developer API)."""
        return "vertex" if self.use_vertexai else "developer"

    @property
    def vertex_auth(self) -> str:
        """How Vertex AI calls authenticate: "adc" (project + location) or "api_key" (express).

        Like the SDK, a project from the environment wins over an API key from the environment.
        """
        if not self.use_vertexai:
            return ""
        if self.project or not self.api_key:
            return "adc"
        return "api_key"

    @property
    def configured(self) -> bool:
        """Whether Google credentials are configured at all (else the worker runs locally)."""
        return bool(self.api_key) or self.use_vertexai

    @property
    def base_url(self) -> str:
        return self.vertex_base_url if self.use_vertexai else self.gemini_base_url

    def describe(self) -> str:
        """One line for the start-up log, without secrets."""
        if self.use_vertexai:
            where = (
                f"project={self.project or '(from ADC)'} location={self.location or 'global'}"
                if self.vertex_auth == "adc"
                else "express mode (API key)"
            )
            target = f"Vertex AI, {where}"
        else:
            target = "Gemini Developer API (API key)"
        if self.base_url:
            target += f", endpoint {self.base_url}"
        return (
            f"{target}; image model {self.default_image_model}, "
            f"video model {self.default_video_model}"
        )
