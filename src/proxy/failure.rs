//! How a failed request is answered: the status and JSON message a client gets, which
//! failures are asked again, and how a failure is counted. Never a 4xx for an upstream
//! failure: clients take 401 and 404 as the Hub's final word.

use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, Session};

use super::ctx::{Ctx, Flow};
use super::download::DownloadFlow;
use super::passthrough::PassthroughFlow;
use super::respond;
use crate::hub::status;
use crate::hub::upstream::UpstreamError;
use crate::metrics::{Metrics, UpstreamCause};

/// `fail_to_proxy`: the best answer left after a failure, in order: nothing (the header went
/// out: closing before `Content-Length` is the only honest signal), the last good API answer
/// (the Hub is unavailable), a JSON error.
pub async fn answer(
    session: &mut Session,
    e: &Error,
    ctx: &mut Ctx,
    passthrough: &PassthroughFlow,
    metrics: &Metrics,
) -> FailToProxy {
    let (status, message) = response_for(e);
    if ctx.route.is_some() && e.esource() == &ErrorSource::Upstream {
        metrics.upstream_error(cause_of(e));
    }
    let sent = |code: u16| FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    };
    if status == 0 {
        return sent(0);
    }
    if session.response_written().is_some() {
        return sent(status);
    }
    // Pingora closes the client's connection after an upstream failure: the answer says so
    // (`Connection: close`), or a client that reuses the connection meets a reset.
    session.set_keepalive(None);
    if status::unavailable(status)
        && matches!(passthrough.serve_snapshot(session, ctx).await, Ok(true))
    {
        return sent(200);
    }
    let _ = respond::error(session, status, &message, &ctx.request_id).await;
    sent(status)
}

/// `error_while_proxy`: a download's body cut before anything was used is asked again;
/// otherwise a request is retried only if idempotent, by Pingora's connection-reuse rule.
pub fn retry(
    session: &mut Session,
    e: Box<Error>,
    ctx: &mut Ctx,
    downloads: &DownloadFlow,
    client_reused: bool,
) -> Box<Error> {
    let host = ctx.target().map_or("", |t| t.url.origin.host.as_str());
    let mut e = e.more_context(format!("upstream {host} failed"));
    let retry_body = match &mut ctx.flow {
        Flow::Download(d) => downloads.retry_untouched(session, d, &e),
        _ => false,
    };
    if retry_body {
        e.set_retry(true);
    } else if session.req_header().method.is_idempotent() {
        e.retry.decide_reuse(client_reused);
    } else {
        e.set_retry(false);
    }
    e
}

/// The status and message for a failed request; status 0 when the client is already gone.
pub fn response_for(e: &Error) -> (u16, String) {
    use ErrorType::*;
    let status = match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    };
    let message = match (status, e.context.as_ref()) {
        (504, _) => "upstream timed out".to_string(),
        (_, Some(context)) => match &e.cause {
            Some(cause) => format!("{}: {cause}", context.as_str()),
            None => context.as_str().to_string(),
        },
        (502, None) => "upstream failed".to_string(),
        (_, None) => e.etype().as_str().to_string(),
    };
    (status, message)
}

/// An upstream that could not be reached, as the Pingora error that answers the client with
/// its status (502, or 504 for a timeout). The cause is kept for the log.
pub fn unreachable(e: UpstreamError) -> Box<Error> {
    let status = e.status();
    let mut err = Error::because(ErrorType::HTTPStatus(status), "upstream failed", e);
    err.esource = ErrorSource::Upstream;
    err
}

/// How an upstream failure is counted.
pub fn cause_of(e: &Error) -> UpstreamCause {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            UpstreamCause::Timeout
        }
        ConnectionClosed | ReadError | WriteError => UpstreamCause::Reset,
        _ => UpstreamCause::Connect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(etype: ErrorType) -> Box<Error> {
        let mut e = Error::new(etype);
        e.esource = ErrorSource::Upstream;
        e
    }

    #[test]
    fn failures_map_to_statuses_clients_retry() {
        let table: [(Box<Error>, u16); 7] = [
            (upstream(ErrorType::ConnectRefused), 502),
            (upstream(ErrorType::ConnectTimedout), 504),
            (upstream(ErrorType::ReadTimedout), 504),
            (upstream(ErrorType::ConnectionClosed), 502),
            (Error::explain(ErrorType::HTTPStatus(416), "x"), 416),
            (Error::new(ErrorType::InternalError), 500),
            (
                {
                    let mut e = Error::new(ErrorType::WriteError);
                    e.esource = ErrorSource::Downstream;
                    e
                },
                0,
            ),
        ];
        for (e, status) in table {
            assert_eq!(response_for(&e).0, status, "{e}");
        }
    }

    #[test]
    fn messages_keep_their_cause() {
        let e = unreachable(UpstreamError::Unreachable {
            host: "hub.test".into(),
            reason: "ConnectRefused".into(),
        });
        let (status, message) = response_for(&e);
        assert_eq!(status, 502);
        assert_eq!(
            message,
            "upstream failed: cannot reach upstream hub.test: ConnectRefused"
        );
        assert!(e.cause.is_some());
        let timeout = unreachable(UpstreamError::Timeout {
            host: "hub.test".into(),
        });
        assert_eq!(response_for(&timeout), (504, "upstream timed out".into()));
        assert_eq!(
            cause_of(&upstream(ErrorType::ReadTimedout)),
            UpstreamCause::Timeout
        );
        assert_eq!(
            cause_of(&upstream(ErrorType::ConnectionClosed)),
            UpstreamCause::Reset
        );
    }
}
