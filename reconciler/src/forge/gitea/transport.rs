//! Sending a request to the API: URLs, the token header, retries of 429, 5xx
//! and transport errors, the circuit breaker, and [`Answer`] to typed errors.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::error::GiteaError;
use super::wire::GiteaMessage;
use super::{GiteaClient, shorten};

/// An answer after retries.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    body: Vec<u8>,
    method: Method,
    path: String,
}

impl Answer {
    /// 2xx passes; 401/403/404 and other statuses become typed errors.
    pub(super) fn ok(self) -> Result<Answer, GiteaError> {
        let (method, path) = (self.method.to_string(), self.path.clone());
        match self.status.as_u16() {
            200..=299 => Ok(self),
            401 => Err(GiteaError::Unauthorized { method, path }),
            403 => Err(GiteaError::Forbidden { method, path }),
            404 => Err(GiteaError::NotFound { method, path }),
            status => {
                let message = serde_json::from_slice::<GiteaMessage>(&self.body)
                    .ok()
                    .and_then(|m| m.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
                Err(GiteaError::Rejected { method, path, status, message: shorten(&message, 300) })
            }
        }
    }

    pub(super) fn json<T: DeserializeOwned>(self) -> Result<T, GiteaError> {
        serde_json::from_slice(&self.body).map_err(|e| GiteaError::Decode {
            method: self.method.to_string(),
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

impl GiteaClient {
    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, GiteaError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| GiteaError::Config(format!("base URL {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }

    /// Sends one request, retrying 429, 5xx and transport errors.
    pub(super) async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, GiteaError> {
        let mut url = self.url(segments)?;
        let path = url.path().to_owned();
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        if let Some(why) = self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Err(GiteaError::Unreachable {
                method: method.to_string(),
                path,
                attempts: 0,
                message: format!("not tried: Gitea failed earlier in this pass ({why})"),
            });
        }
        let write = method != Method::GET && method != Method::HEAD;
        if write {
            crate::fault::reach("gitea-write", None);
        }
        if write && let Err(lost) = self.lease.check() {
            return Err(GiteaError::LeaseLost { method: method.to_string(), path, lost });
        }
        let result = self.send_with_retries(method, url, path, body).await;
        if let Err(e @ (GiteaError::Unreachable { .. } | GiteaError::Server { .. })) = &result {
            *self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        }
        result
    }

    /// Lets calls through again (at the start of a pass).
    pub fn close_circuit(&self) {
        *self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    async fn send_with_retries(
        &self,
        method: Method,
        url: Url,
        path: String,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, GiteaError> {
        let max = self.retry.max_attempts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, self.token.0.clone())
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                req = req.json(body);
            }
            let (retry_after, failure) = match req.send().await {
                Err(e) => {
                    let e = e.without_url();
                    if attempt >= max {
                        return Err(GiteaError::Unreachable {
                            method: method.to_string(),
                            path,
                            attempts: attempt,
                            message: e.to_string(),
                        });
                    }
                    (None, format!("transport error: {e}"))
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        if attempt >= max {
                            return Err(GiteaError::RateLimited { method: method.to_string(), path, attempts: attempt });
                        }
                        let retry_after = resp
                            .headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        (retry_after, "429 rate limited".to_owned())
                    } else if status.is_server_error() {
                        if attempt >= max {
                            return Err(GiteaError::Server {
                                method: method.to_string(),
                                path,
                                status: status.as_u16(),
                                attempts: attempt,
                            });
                        }
                        (None, format!("server error {status}"))
                    } else {
                        match resp.bytes().await {
                            Ok(bytes) => {
                                tracing::debug!(%method, %path, status = status.as_u16(), "gitea answered");
                                return Ok(Answer { status, body: bytes.to_vec(), method, path });
                            }
                            Err(e) => {
                                let e = e.without_url();
                                if attempt >= max {
                                    return Err(GiteaError::Unreachable {
                                        method: method.to_string(),
                                        path,
                                        attempts: attempt,
                                        message: e.to_string(),
                                    });
                                }
                                (None, format!("reading the answer: {e}"))
                            }
                        }
                    }
                }
            };
            let delay = self.retry.delay(attempt, retry_after);
            tracing::warn!(%method, %path, attempt, max, delay_ms = delay.as_millis() as u64, %failure, "gitea call failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, String)]) -> Result<T, GiteaError> {
        self.send(Method::GET, segments, query, None).await?.ok()?.json()
    }
}
