//! Git LFS batch answers, pure: the download actions the Hub gives (a CDN `href`, maybe with
//! `header` auth for that CDN) are taken out of the answer and replaced by actions pointing at
//! hf-edge, so that LFS objects come from the cache. Upload and verify actions, and objects
//! whose download hf-edge cannot fetch, are left as the Hub wrote them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::grammar::is_sha256;

/// A download action the Hub gave for one object, kept by hf-edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadAction {
    pub oid: String,
    pub size: u64,
    pub href: String,
    /// The `header` map of the action: auth for `href`, never given to the client.
    pub header: Vec<(String, String)>,
    /// How long the action is kept and offered: the Hub's own expiry, at most the cap given.
    pub ttl: Duration,
}

/// An answer with its download actions replaced, and the actions it had.
#[derive(Debug)]
pub struct Rewritten {
    pub body: Vec<u8>,
    pub actions: Vec<DownloadAction>,
}

/// How a batch answer's download actions are replaced.
pub struct Rewrite<'a> {
    /// hf-edge's URL of an object (by oid).
    pub object_url: &'a dyn Fn(&str) -> String,
    /// Whether hf-edge may fetch an `href` (the Hub or an allowed CDN host).
    pub fetchable: &'a dyn Fn(&str) -> bool,
    /// The client's own `Authorization`, given back in the new action's `header` so that
    /// git-lfs sends it with the object request (the object is served to that identity only).
    pub client_auth: Option<&'a str>,
    /// Longest time an action is kept: the Hub's yes is not trusted for longer.
    pub max_ttl: Duration,
    pub now: DateTime<Utc>,
}

impl Rewrite<'_> {
    /// `None` when `body` is not a batch answer (it is then passed on unchanged).
    pub fn apply(&self, body: &[u8]) -> Option<Rewritten> {
        let mut doc: Value = serde_json::from_slice(body).ok()?;
        let objects = doc.get_mut("objects")?.as_array_mut()?;
        let mut actions = Vec::new();
        for object in objects.iter_mut() {
            if let Some(action) = self.replace(object) {
                actions.push(action);
            }
        }
        let body = serde_json::to_vec(&doc).ok()?;
        Some(Rewritten { body, actions })
    }

    /// Replaces one object's download action; `None` if it has none hf-edge can take over.
    fn replace(&self, object: &mut Value) -> Option<DownloadAction> {
        let oid = object.get("oid")?.as_str()?.to_string();
        let size = object.get("size")?.as_u64()?;
        let download = object.get("actions")?.get("download")?.as_object()?;
        let href = download.get("href")?.as_str()?.to_string();
        if !is_sha256(&oid) || !(self.fetchable)(&href) {
            return None;
        }
        let ttl = self.ttl(download)?;
        let header = match download.get("header") {
            None => Vec::new(),
            Some(Value::Object(h)) => h
                .iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        let mut ours = Map::new();
        ours.insert("href".into(), Value::from((self.object_url)(&oid)));
        if let Some(auth) = self.client_auth {
            let mut h = Map::new();
            h.insert("Authorization".into(), Value::from(auth));
            ours.insert("header".into(), Value::Object(h));
        }
        ours.insert("expires_in".into(), Value::from(ttl.as_secs()));
        object["actions"]["download"] = Value::Object(ours);
        object["authenticated"] = Value::Bool(true);
        Some(DownloadAction {
            oid,
            size,
            href,
            header,
            ttl,
        })
    }

    /// The action's lifetime: `expires_in` (which git-lfs prefers), else `expires_at`, capped
    /// by `max_ttl`; `None` when it has already expired or under a second is left.
    fn ttl(&self, action: &Map<String, Value>) -> Option<Duration> {
        let hub = match (action.get("expires_in"), action.get("expires_at")) {
            (Some(secs), _) => Some(secs.as_i64()?),
            (None, Some(at)) => {
                let at = DateTime::parse_from_rfc3339(at.as_str()?).ok()?;
                Some((at.with_timezone(&Utc) - self.now).num_seconds())
            }
            (None, None) => None,
        };
        let secs = match hub {
            Some(s) if s < 1 => return None,
            Some(s) => (s as u64).min(self.max_ttl.as_secs()),
            None => self.max_ttl.as_secs(),
        };
        (secs >= 1).then(|| Duration::from_secs(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OID: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    fn rewrite(body: &Value, client_auth: Option<&str>) -> Option<(Value, Vec<DownloadAction>)> {
        let object_url = |oid: &str| format!("http://edge/org/m.git/info/lfs/objects/{oid}");
        let fetchable = |href: &str| href.starts_with("https://cdn.test/");
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = Rewrite {
            object_url: &object_url,
            fetchable: &fetchable,
            client_auth,
            max_ttl: Duration::from_secs(60),
            now,
        };
        let out = r.apply(&serde_json::to_vec(body).unwrap())?;
        Some((serde_json::from_slice(&out.body).unwrap(), out.actions))
    }

    #[test]
    fn download_actions_point_at_hf_edge_and_keep_the_cdn_auth_back() {
        let answer = json!({"transfer": "basic", "objects": [{
            "oid": OID, "size": 7,
            "actions": {"download": {
                "href": "https://cdn.test/blobs/x?sig=1",
                "header": {"X-Cdn-Token": "secret"},
                "expires_in": 3600,
            }},
        }]});
        let (body, actions) = rewrite(&answer, Some("Bearer hf_own")).unwrap();
        let download = &body["objects"][0]["actions"]["download"];
        assert_eq!(
            download,
            &json!({
                "href": format!("http://edge/org/m.git/info/lfs/objects/{OID}"),
                "header": {"Authorization": "Bearer hf_own"},
                "expires_in": 60,
            })
        );
        assert_eq!(body["objects"][0]["authenticated"], json!(true));
        assert!(!String::from_utf8(serde_json::to_vec(&body).unwrap())
            .unwrap()
            .contains("secret"));
        assert_eq!(
            actions,
            [DownloadAction {
                oid: OID.into(),
                size: 7,
                href: "https://cdn.test/blobs/x?sig=1".into(),
                header: vec![("X-Cdn-Token".into(), "secret".into())],
                ttl: Duration::from_secs(60),
            }]
        );
    }

    #[test]
    fn expiry_is_the_hubs_when_sooner() {
        let answer = |expiry: Value| {
            let mut download = json!({"href": "https://cdn.test/b"});
            download
                .as_object_mut()
                .unwrap()
                .extend(expiry.as_object().unwrap().clone());
            json!({"objects": [{"oid": OID, "size": 1, "actions": {"download": download}}]})
        };
        let ttl = |expiry: Value| {
            rewrite(&answer(expiry), None).map(|(_, a)| a.first().map(|a| a.ttl.as_secs()))
        };
        assert_eq!(ttl(json!({})), Some(Some(60)));
        assert_eq!(ttl(json!({"expires_in": 30})), Some(Some(30)));
        assert_eq!(
            ttl(json!({"expires_at": "2026-01-01T00:00:20Z"})),
            Some(Some(20))
        );
        // Already expired: left for the client to find out.
        assert_eq!(ttl(json!({"expires_in": 0})), Some(None));
        assert_eq!(
            ttl(json!({"expires_at": "2025-12-31T00:00:00Z"})),
            Some(None)
        );
    }

    #[test]
    fn uploads_errors_and_foreign_hosts_are_left_alone() {
        let answer = json!({"objects": [
            {"oid": OID, "size": 1, "actions": {
                "upload": {"href": "https://cdn.test/up"},
                "verify": {"href": "https://hub/verify"}}},
            {"oid": OID, "size": 1, "error": {"code": 404, "message": "Object does not exist"}},
            {"oid": OID, "size": 1, "actions": {"download": {"href": "https://elsewhere/b"}}},
            {"oid": "not-an-oid", "size": 1, "actions": {"download": {"href": "https://cdn.test/b"}}},
        ]});
        let (body, actions) = rewrite(&answer, None).unwrap();
        assert_eq!(body, answer);
        assert!(actions.is_empty());
        assert!(rewrite(&json!({"message": "Not Found"}), None).is_none());
        let not_json = Rewrite {
            object_url: &|_: &str| String::new(),
            fetchable: &|_: &str| true,
            client_auth: None,
            max_ttl: Duration::from_secs(60),
            now: DateTime::<Utc>::from(std::time::SystemTime::now()),
        };
        assert!(not_json.apply(b"<html>").is_none());
    }
}
