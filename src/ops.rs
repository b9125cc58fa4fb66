//! The operator endpoints on `metrics.listen`: `/metrics`, `/healthz` (alive), `/readyz`
//! (store writable; the Hub's state reported, never required: see [`crate::health`]), open;
//! and `/admin/*` (offline mode, warm jobs), which needs the bearer `ops.admin_token` (a
//! cross-site "simple request" cannot carry one). Never on the client listener.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gateway::Gateway;
use crate::health::{self, HubProbe};
use crate::metrics::Metrics;
use crate::store::BlobStore;
use crate::warm::Warmer;

/// A warm request body read at most.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// The HTTP app on `metrics.listen`.
pub struct OpsApp {
    pub metrics: Arc<Metrics>,
    pub store: &'static BlobStore,
    /// Each mount's upstream state, for `/readyz`.
    pub hub: Arc<HubProbe>,
    /// The live config: mounts' upstreams, `ops.admin_token` (`None`: admin endpoints are
    /// refused), and reload.
    pub gateway: Arc<Gateway>,
    pub warmer: Arc<Warmer>,
}

/// Why an admin request was refused.
#[derive(Debug, PartialEq, Eq)]
enum AdminRefusal {
    /// No admin token configured.
    Off,
    /// No bearer token, or another one.
    Unauthorized,
    /// Sent by a browser page (it carries `Origin`): never an operator's tool.
    CrossSite,
}

/// Checks an admin request's credentials (comparing in constant time).
fn admit_admin(
    token: Option<&str>,
    authorization: Option<&[u8]>,
    origin: bool,
) -> Result<(), AdminRefusal> {
    let token = token.ok_or(AdminRefusal::Off)?;
    if origin {
        return Err(AdminRefusal::CrossSite);
    }
    let given = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .ok_or(AdminRefusal::Unauthorized)?;
    let want = token.as_bytes();
    let same = given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(()).ok_or(AdminRefusal::Unauthorized)
}

fn admin_refused(r: AdminRefusal) -> Response<Vec<u8>> {
    let (status, message) = match r {
        AdminRefusal::Off => (403, "admin endpoints are off: set ops.admin_token"),
        AdminRefusal::Unauthorized => (
            401,
            "admin endpoints need Authorization: Bearer <ops.admin_token>",
        ),
        AdminRefusal::CrossSite => (403, "admin endpoints refuse requests from web pages"),
    };
    let mut resp = json(status, serde_json::json!({ "error": message }));
    if status == 401 {
        resp.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"hf-edge admin\""),
        );
    }
    resp
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("valid response")
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

impl OpsApp {
    /// Ready while the store is writable; the Hub's state is in the body, not in the status.
    async fn readiness(&self) -> Response<Vec<u8>> {
        let probe = self.store.layout().root().join("tmp/.ready-probe");
        let store = tokio::task::spawn_blocking(move || {
            std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let r = health::readiness(store);
        let status = if r.ready { 200 } else { 503 };
        let upstreams = self.hub.states();
        json(
            status,
            serde_json::json!({
                "status": if r.ready { "ready" } else { "not ready" },
                "store": r.store,
                "config": r.config,
                // The top-level upstream's, as before mounts; every mount's below.
                "hub": upstreams[0].state,
                "upstream": upstreams[0].detail,
                "upstreams": upstreams,
            }),
        )
    }
}

impl OpsApp {
    /// `GET` shows offline mode; `POST ?enabled=true|false` switches it.
    async fn offline(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method == http::Method::POST {
            let wanted = req
                .uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("enabled=")));
            match wanted {
                // Every mount's upstream: offline mode is about the site's link, not one Hub.
                Some(on @ ("true" | "false")) => {
                    for u in self.gateway.upstreams() {
                        u.set_offline(on == "true");
                    }
                }
                _ => {
                    return json(
                        400,
                        serde_json::json!({"error": "use POST /admin/offline?enabled=true or ?enabled=false"}),
                    )
                }
            }
            log::warn!(
                "offline mode set to {} via the ops listener",
                self.is_offline()
            );
        } else if req.method != http::Method::GET {
            return json(405, serde_json::json!({"error": "GET or POST"}));
        }
        json(200, serde_json::json!({"offline": self.is_offline()}))
    }

    /// `POST`: re-reads the config file, as SIGHUP does.
    async fn reload(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != http::Method::POST {
            return json(405, serde_json::json!({"error": "POST"}));
        }
        let gateway = self.gateway.clone();
        match tokio::task::spawn_blocking(move || gateway.reload()).await {
            Ok(Ok(())) => json(200, serde_json::json!({"reloaded": true})),
            Ok(Err(e)) => json(400, serde_json::json!({"error": e})),
            Err(e) => json(
                500,
                serde_json::json!({"error": format!("reload failed: {e}")}),
            ),
        }
    }

    fn is_offline(&self) -> bool {
        self.gateway.upstreams().iter().all(|u| u.is_offline())
    }
}

impl OpsApp {
    /// `POST /admin/warm`: a JSON [`crate::warm::RawSpec`] → 201 and the new job.
    async fn warm(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().method != http::Method::POST {
            return json(405, serde_json::json!({"error": "POST a warm request"}));
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ADMIN_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    let e = format!("a warm request is at most {MAX_ADMIN_BODY} bytes");
                    return json(413, serde_json::json!({ "error": e }));
                }
                Ok(None) => break,
                Err(e) => {
                    let e = format!("reading the request body failed: {e}");
                    return json(400, serde_json::json!({ "error": e }));
                }
            }
        }
        let spec = serde_json::from_slice::<crate::warm::RawSpec>(&body)
            .map_err(|e| format!("not a warm request: {e}"))
            .and_then(|raw| raw.validate().map_err(|(field, m)| format!("{field}: {m}")));
        let spec = match spec {
            Ok(s) => s,
            Err(e) => return json(400, serde_json::json!({ "error": e })),
        };
        match self.warmer.submit(spec, "api") {
            Ok(job) => json(201, job_json(&job.status())),
            Err(e) => json(e.status(), serde_json::json!({"error": e.to_string()})),
        }
    }

    /// `GET /admin/jobs`, `GET` or `DELETE /admin/jobs/{id}`.
    fn jobs(&self, method: &http::Method, id: Option<&str>) -> Response<Vec<u8>> {
        let jobs = &self.warmer.jobs;
        let Some(id) = id else {
            if method != http::Method::GET {
                return json(405, serde_json::json!({"error": "GET the job list"}));
            }
            return json(200, serde_json::json!({ "jobs": jobs.list() }));
        };
        let Some(job) = id.parse().ok().and_then(|id| jobs.get(id)) else {
            return json(404, serde_json::json!({"error": format!("no job {id:?}")}));
        };
        match *method {
            http::Method::GET => json(200, job_json(&job.status())),
            http::Method::DELETE => match jobs.cancel(job.id()) {
                Some(true) => json(200, job_json(&job.status())),
                _ => json(
                    409,
                    serde_json::json!({"error": format!("job {id} has ended already")}),
                ),
            },
            _ => json(405, serde_json::json!({"error": "GET or DELETE a job"})),
        }
    }
}

fn job_json(s: &crate::warm::JobStatus) -> serde_json::Value {
    serde_json::to_value(s).expect("job status serializes")
}

#[async_trait]
impl ServeHttp for OpsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4",
                self.metrics.gather(self.store.counts()),
            ),
            "/healthz" => json(200, serde_json::json!({"status": "ok"})),
            "/readyz" => self.readiness().await,
            path if path.starts_with("/admin/") => {
                let req = session.req_header();
                let auth = req.headers.get(http::header::AUTHORIZATION);
                let origin = req.headers.contains_key(http::header::ORIGIN);
                let admin_token = self.gateway.admin_token();
                if let Err(r) =
                    admit_admin(admin_token.as_deref(), auth.map(|v| v.as_bytes()), origin)
                {
                    return admin_refused(r);
                }
                let method = req.method.clone();
                match path {
                    "/admin/offline" => self.offline(session).await,
                    "/admin/reload" => self.reload(session).await,
                    "/admin/warm" => self.warm(session).await,
                    "/admin/jobs" => self.jobs(&method, None),
                    p if p.starts_with("/admin/jobs/") => {
                        self.jobs(&method, p.strip_prefix("/admin/jobs/"))
                    }
                    _ => json(404, serde_json::json!({"error": "no such admin endpoint"})),
                }
            }
            _ => json(
                404,
                serde_json::json!({"error": "not found; try /metrics, /healthz or /readyz"}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_needs_the_configured_bearer_and_no_browser() {
        use AdminRefusal::*;
        let t = Some("s3cret");
        assert_eq!(admit_admin(None, Some(b"Bearer s3cret"), false), Err(Off));
        assert_eq!(admit_admin(t, None, false), Err(Unauthorized));
        assert_eq!(
            admit_admin(t, Some(b"Bearer s3cre"), false),
            Err(Unauthorized)
        );
        assert_eq!(
            admit_admin(t, Some(b"Bearer s3creT"), false),
            Err(Unauthorized)
        );
        assert_eq!(admit_admin(t, Some(b"s3cret"), false), Err(Unauthorized));
        assert_eq!(admit_admin(t, Some(b"Bearer s3cret"), true), Err(CrossSite));
        assert_eq!(admit_admin(t, Some(b"Bearer s3cret"), false), Ok(()));
    }
}
