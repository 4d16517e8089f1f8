//! The HTTP API of `docs/protocol.md` section 4. Every mutation goes through the
//! engine, so it emits the same events as its WebSocket twin.

use std::{collections::HashMap, str::FromStr, time::Duration};

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use chat_core::{
    Actor, ChatId, Encryption, Error, MessageId, ModerationAction, NewGroup, Report, ReportId,
    ReportStatus, Role, Timestamp, UserId,
    engine::{ByteRange, ChatUpdate, HistoryRequest, PrivacyPatch, Served},
    protocol::ErrorBody,
    store::{AuditQuery, ChatListQuery, GroupPatch, ReportQuery},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{AppState, auth::issue_hs256, limits::CommandClass, metrics as m};

/// Refuses requests whose target or header section is over the limits of
/// [`WsConfig`](crate::WsConfig), with the error body (hyper's own limits,
/// further out, answer without one).
pub(crate) async fn request_limits(
    State(app): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri > app.config.max_uri_bytes {
        let body = json!({"code": "too_large", "message": format!("the request target is longer than {} bytes", app.config.max_uri_bytes)});
        return (StatusCode::URI_TOO_LONG, Json(body)).into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > app.config.max_header_bytes {
        let body = json!({"code": "too_large", "message": format!("the request headers are larger than {} bytes", app.config.max_header_bytes)});
        return (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Json(body)).into_response();
    }
    next.run(request).await
}

/// An engine error as an HTTP response: the matching status and
/// `{"code", "message"}`; 429 carries `Retry-After`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        m::error(code);
        if let Error::Backend { source } = &self.0 {
            tracing::error!(error = %source, "internal error answering an HTTP request");
        }
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(ErrorBody::from(&self.0))).into_response();
        if let Error::RateLimited { retry_after } = &self.0 {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// An unknown route: the protocol's error body, like every other error.
pub(crate) async fn no_route() -> Response {
    let body = json!({"code": "not_found", "message": "no such route"});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// A known route with a method it does not serve.
pub(crate) async fn wrong_method() -> Response {
    let body = json!({"code": "bad_request", "message": "method not allowed on this route"});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The authenticated, rate-limited caller of an API request.
#[derive(Debug)]
pub(crate) struct Caller(pub(crate) Actor);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        DeviceCaller::from_request_parts(parts, app)
            .await
            .map(|c| Caller(c.actor))
    }
}

/// [`Caller`] with the device its token names (the MLS routes).
#[derive(Debug)]
pub(crate) struct DeviceCaller {
    pub(crate) actor: Actor,
    pub(crate) device: chat_core::DeviceId,
}

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, app, true).await
    }
}

/// [`Caller`] who may be suspended: erasure is a right a suspension does
/// not take away (and an erasure that stopped half-way leaves its user
/// suspended until it is run again).
#[derive(Debug)]
pub(crate) struct SuspendedCaller(pub(crate) Actor);

impl FromRequestParts<AppState> for SuspendedCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, app, false)
            .await
            .map(|c| SuspendedCaller(c.actor))
    }
}

/// The caller of a request from its bearer token, refused while suspended
/// if `refuse_suspended`, and charged one command of the rate limits.
async fn authenticate(
    parts: &Parts,
    app: &AppState,
    refuse_suspended: bool,
) -> Result<DeviceCaller, ApiError> {
    let token = bearer(&parts.headers)
        .ok_or_else(|| Error::Unauthenticated("Authorization: Bearer <token> required".into()))?;
    let identity = app.verifier.verify(token)?;
    let device = identity.device_id;
    let actor = if refuse_suspended {
        app.engine
            .authorize(identity.user_id, identity.admin)
            .await?
    } else {
        Actor {
            user_id: identity.user_id,
            admin: identity.admin,
        }
    };
    let class = if parts.method == Method::GET {
        CommandClass::Other
    } else {
        CommandClass::Write
    };
    if let Err(retry_after) = app.driver.limiter().check(&actor.user_id, class) {
        metrics::counter!(m::RATE_LIMITED).increment(1);
        return Err(ApiError(Error::RateLimited { retry_after }));
    }
    Ok(DeviceCaller { actor, device })
}

/// A JSON body whose rejections are answered in the API's error format.
#[derive(Debug)]
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError(Error::TooLarge("request body too large".into())))
            }
            Err(rejection) if rejection.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Err(ApiError(Error::UnsupportedMediaType(
                    "send JSON with Content-Type: application/json".into(),
                )))
            }
            Err(rejection) => Err(ApiError(Error::invalid(rejection.body_text()))),
        }
    }
}

/// Query strings whose rejections are answered in the API's error format.
#[derive(Debug)]
pub(crate) struct Params<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|r| ApiError(Error::invalid(r.body_text())))
    }
}

fn id<T: FromStr<Err = Error>>(s: &str) -> Result<T, ApiError> {
    s.parse().map_err(ApiError)
}

fn to_json<T: serde::Serialize>(v: T) -> ApiResult {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError(Error::backend(e)))
}

fn ok() -> ApiResult {
    Ok(Json(json!({})))
}

// --- chats ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct ListParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> Result<(Timestamp, ChatId), ApiError> {
    let bad = || ApiError(Error::invalid("cursor is not one this server issued"));
    let (ms, chat) = cursor.split_once('_').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    Ok((Timestamp::from_millis(ms), chat.parse().map_err(|_| bad())?))
}

pub(crate) async fn list_sessions(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Params(p): Params<ListParams>,
) -> ApiResult {
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError(Error::invalid("limit must be 1..=200")));
    }
    let after = p.cursor.as_deref().map(parse_cursor).transpose()?;
    let page = app
        .engine
        .list_chats(&actor, ChatListQuery { after, limit })
        .await?;
    let next_cursor = page
        .next
        .map(|(at, chat)| format!("{}_{}", at.as_millis(), chat));
    Ok(Json(
        json!({ "chats": to_json(page.chats)?.0, "next_cursor": next_cursor }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct OpenDirect {
    user_id: UserId,
    #[serde(default)]
    encryption: Encryption,
}

pub(crate) async fn open_direct(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Body(b): Body<OpenDirect>,
) -> ApiResult<Response> {
    let opened = app
        .engine
        .create_direct(&actor, &b.user_id, b.encryption)
        .await?;
    let status = if opened.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, to_json(opened.chat)?).into_response())
}

pub(crate) async fn get_session(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
) -> ApiResult {
    to_json(app.engine.get_chat(&actor, id(&chat)?).await?)
}

pub(crate) async fn update_session(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
    Body(b): Body<GroupFields>,
) -> ApiResult {
    let update = ChatUpdate {
        muted_until: b.muted_until,
        retention_secs: b.retention_secs,
        group: b.patch(),
    };
    to_json(app.engine.update_chat(&actor, id(&chat)?, update).await?)
}

pub(crate) async fn leave_session(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
) -> ApiResult {
    app.engine.leave(&actor, id(&chat)?).await?;
    ok()
}

pub(crate) async fn session_messages(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
    Params(q): Params<HistoryRequest>,
) -> ApiResult {
    to_json(app.engine.history(&actor, id(&chat)?, q).await?)
}

// --- messages ---------------------------------------------------------------

pub(crate) async fn get_message(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(msg): Path<String>,
) -> ApiResult {
    to_json(app.engine.get_message(&actor, id(&msg)?).await?)
}

#[derive(Debug, Deserialize)]
pub(crate) struct Edit {
    content: String,
}

pub(crate) async fn edit_message(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(msg): Path<String>,
    Body(b): Body<Edit>,
) -> ApiResult {
    to_json(app.engine.edit(&actor, id(&msg)?, &b.content).await?)
}

pub(crate) async fn delete_message(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(msg): Path<String>,
) -> ApiResult {
    let message_id: MessageId = id(&msg)?;
    app.engine.delete(&actor, message_id).await?;
    Ok(Json(json!({ "message_id": message_id })))
}

pub(crate) async fn read_up_to(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(msg): Path<String>,
) -> ApiResult {
    app.engine.mark_read_up_to(&actor, id(&msg)?).await?;
    ok()
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReportBody {
    reason: String,
}

pub(crate) async fn report_message(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(msg): Path<String>,
    Body(b): Body<ReportBody>,
) -> ApiResult<Response> {
    let report_id = app.engine.report(&actor, id(&msg)?, &b.reason).await?;
    Ok((StatusCode::CREATED, Json(json!({ "report_id": report_id }))).into_response())
}

// --- groups -----------------------------------------------------------------

pub(crate) async fn create_group(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Body(b): Body<NewGroup>,
) -> ApiResult<Response> {
    let chat = app.engine.create_group(&actor, b).await?;
    Ok((StatusCode::CREATED, to_json(chat)?).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct Invite {
    user_id: UserId,
    #[serde(default)]
    role: Option<Role>,
}

pub(crate) async fn invite(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
    Body(b): Body<Invite>,
) -> ApiResult {
    let role = b.role.unwrap_or(Role::Member);
    app.engine
        .add_participant(&actor, id(&chat)?, &b.user_id, role)
        .await?;
    ok()
}

pub(crate) async fn remove_participant(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path((chat, user)): Path<(String, String)>,
) -> ApiResult {
    app.engine
        .remove_participant(&actor, id(&chat)?, &id(&user)?)
        .await?;
    ok()
}

/// Group fields of `PUT /chat/groups/:id` and `PUT /chat/sessions/:id`
/// (which also takes `muted_until`: a timestamp, or `null` to unmute; and
/// `retention_secs`, as `set_retention`'s `seconds`).
#[derive(Debug, Deserialize)]
pub(crate) struct GroupFields {
    #[serde(default, deserialize_with = "present")]
    muted_until: Option<Option<Timestamp>>,
    #[serde(default, deserialize_with = "present")]
    retention_secs: Option<Option<u64>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    avatar_url: Option<String>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

impl GroupFields {
    fn patch(self) -> GroupPatch {
        GroupPatch {
            name: self.name,
            description: self.description,
            avatar_url: self.avatar_url,
        }
    }
}

pub(crate) async fn update_group(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
    Body(b): Body<GroupFields>,
) -> ApiResult {
    to_json(
        app.engine
            .update_group(&actor, id(&chat)?, b.patch())
            .await?,
    )
}

// --- sync, blocks, privacy -------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct SyncParams {
    cursors: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
}

pub(crate) async fn sync(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Params(p): Params<SyncParams>,
) -> ApiResult {
    let cursors: HashMap<ChatId, u64> = match p.cursors.as_deref() {
        None | Some("") => HashMap::new(),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            ApiError(Error::invalid(format!(
                "cursors must be a JSON object of chat id to seq: {e}"
            )))
        })?,
    };
    to_json(
        app.engine
            .sync_from(&actor, &cursors, p.after.as_deref())
            .await?,
    )
}

pub(crate) async fn block(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(user): Path<String>,
) -> ApiResult {
    app.engine.block(&actor, &id(&user)?).await?;
    ok()
}

pub(crate) async fn unblock(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(user): Path<String>,
) -> ApiResult {
    app.engine.unblock(&actor, &id(&user)?).await?;
    ok()
}

pub(crate) async fn list_blocks(State(app): State<AppState>, Caller(actor): Caller) -> ApiResult {
    Ok(Json(
        json!({ "blocked": app.engine.blocked_users(&actor).await? }),
    ))
}

pub(crate) async fn set_privacy(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Body(b): Body<PrivacyPatch>,
) -> ApiResult {
    Ok(Json(
        json!({ "privacy": app.engine.set_privacy(&actor, b).await? }),
    ))
}

// --- admin --------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct ReportParams {
    status: Option<String>,
    limit: Option<usize>,
    chat_id: Option<String>,
    reporter_id: Option<String>,
    reported_user_id: Option<String>,
    cursor: Option<String>,
}

pub(crate) async fn list_reports(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Params(p): Params<ReportParams>,
) -> ApiResult {
    let status = match p.status.as_deref() {
        None | Some("open") => Some(ReportStatus::Open),
        Some("all") => None,
        Some(s) => Some(s.parse()?),
    };
    let limit = p.limit.unwrap_or(100);
    let mut query = ReportQuery::new(limit).status(status);
    query.chat = p.chat_id.as_deref().map(id).transpose()?;
    query.reporter = p.reporter_id.map(UserId::new).transpose()?;
    query.reported_user = p.reported_user_id.map(UserId::new).transpose()?;
    query.after = p.cursor.as_deref().map(id).transpose()?;
    let reports = app.engine.list_reports(&actor, query).await?;
    let next_cursor = (reports.len() == limit)
        .then(|| reports.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(
        json!({ "reports": reports.iter().map(Report::view).collect::<Vec<_>>(), "next_cursor": next_cursor }),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuditParams {
    cursor: Option<String>,
    limit: Option<usize>,
    actor_id: Option<String>,
    action: Option<String>,
}

/// `GET /api/v1/admin/audit`: `{entries, next_cursor}`, newest first.
pub(crate) async fn audit_log(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Params(p): Params<AuditParams>,
) -> ApiResult {
    let query = AuditQuery {
        before: p.cursor.as_deref().map(id).transpose()?,
        limit: p.limit.unwrap_or(AuditQuery::default().limit),
        actor: p.actor_id.as_deref().map(id).transpose()?,
        action: p.action.as_deref().map(id).transpose()?,
    };
    to_json(app.engine.audit_log(&actor, query).await?)
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StatsParams {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /api/v1/admin/stats?from&to` (PROTOCOL.md 5.5): counts only.
pub(crate) async fn stats(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Params(p): Params<StatsParams>,
) -> ApiResult {
    to_json(
        app.engine
            .stats(&actor, p.from.as_deref(), p.to.as_deref())
            .await?,
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct Resolve {
    #[serde(flatten)]
    action: ModerationAction,
    #[serde(default)]
    note: Option<String>,
}

pub(crate) async fn resolve_report(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(report): Path<String>,
    Body(b): Body<Resolve>,
) -> ApiResult {
    let report_id: ReportId = id(&report)?;
    let report = app
        .engine
        .resolve_report(&actor, report_id, b.action, b.note)
        .await?;
    to_json(report.view())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Suspend {
    #[serde(default)]
    until: Option<Timestamp>,
}

pub(crate) async fn suspend(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let until = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Suspend>(&body)
            .map_err(|e| ApiError(Error::invalid(format!("invalid body: {e}"))))?
            .until
    };
    app.engine.suspend(&actor, &id(&user)?, until).await?;
    ok()
}

/// `DELETE /users/me`: erases the caller (PROTOCOL.md 5.2), suspended or
/// not; answers what was removed and what is kept.
pub(crate) async fn erase_me(
    State(app): State<AppState>,
    SuspendedCaller(actor): SuspendedCaller,
) -> ApiResult {
    let user = actor.user_id.clone();
    let done = app.engine.erase_user(&actor, &user).await?;
    Ok(Json(json!(done)))
}

/// `DELETE /admin/users/:id`: the admin twin of [`erase_me`].
pub(crate) async fn erase_user(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(user): Path<String>,
) -> ApiResult {
    let done = app.engine.erase_user(&actor, &id(&user)?).await?;
    Ok(Json(json!(done)))
}

pub(crate) async fn unsuspend(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(user): Path<String>,
) -> ApiResult {
    app.engine.unsuspend(&actor, &id(&user)?).await?;
    ok()
}

// --- operations -------------------------------------------------------------

pub(crate) async fn healthz(State(app): State<AppState>) -> Response {
    let health = app.engine.health().await;
    if health.ok {
        return Json(json!({"status": "ok"})).into_response();
    }
    tracing::error!(
        store_error = health.store_error.as_deref().unwrap_or("none"),
        lanes_running = health.lanes_running,
        "health check failed"
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable"})),
    )
        .into_response()
}

pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    let Some(render) = &app.config.metrics else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let stats = app.engine.hub_stats();
    let queued = stats
        .frames_queued
        .load(std::sync::atomic::Ordering::Relaxed);
    let slow = stats.slow_closed.load(std::sync::atomic::Ordering::Relaxed);
    metrics::counter!(m::EVENTS_DELIVERED).absolute(queued);
    metrics::counter!(m::SLOW_CLOSED).absolute(slow);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct DevToken {
    user: String,
    #[serde(default)]
    admin: bool,
}

pub(crate) async fn dev_token(
    State(app): State<AppState>,
    Params(p): Params<DevToken>,
) -> ApiResult {
    let Some(secret) = &app.config.dev_token_secret else {
        return Err(ApiError(Error::not_found(
            "dev tokens are only issued in --dev mode",
        )));
    };
    let user: UserId = id(&p.user)?;
    let token = issue_hs256(secret, &user, p.admin, Duration::from_secs(24 * 3600))?;
    Ok(Json(json!({ "token": token, "user_id": user })))
}

// --- MLS key packages ----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishKeyPackages {
    #[serde(default)]
    key_packages: Vec<String>,
    #[serde(default)]
    last_resort: Option<String>,
}

/// `POST /api/v1/mls/key-packages`: `publish_key_packages` for the device
/// the token names.
pub(crate) async fn publish_key_packages(
    State(app): State<AppState>,
    caller: DeviceCaller,
    Body(b): Body<PublishKeyPackages>,
) -> ApiResult {
    let (packages, last_resort) =
        chat_core::protocol::key_packages_from_base64(&b.key_packages, b.last_resort.as_deref())?;
    let available = app
        .engine
        .publish_key_packages(&caller.actor, &caller.device, packages, last_resort)
        .await?;
    Ok(Json(json!({ "available": available })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimKeyPackages {
    user_ids: Vec<chat_core::UserId>,
}

/// `POST /api/v1/mls/key-packages/claim`: `claim_key_packages`.
pub(crate) async fn claim_key_packages(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Body(b): Body<ClaimKeyPackages>,
) -> ApiResult {
    let claimed = app.engine.claim_key_packages(&actor, &b.user_ids).await?;
    Ok(Json(
        json!({ "devices": chat_core::protocol::ClaimedView::list(&claimed) }),
    ))
}

// --- media ------------------------------------------------------------------

/// Multipart framing around the file: boundaries, part headers.
const MULTIPART_SLACK: usize = 64 * 1024;

/// The body limit of the upload route: the largest upload and its framing.
pub(crate) fn upload_body_limit(app: &AppState) -> usize {
    app.engine.media_limits().map_or(0, |limits| {
        usize::try_from(limits.largest())
            .unwrap_or(usize::MAX)
            .saturating_add(MULTIPART_SLACK)
    })
}

/// A multipart error as the API's: the body limit is `too_large`.
fn multipart_error(e: axum::extract::multipart::MultipartError) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::TooLarge("the upload is larger than any allowed".into())
    } else {
        Error::invalid(format!("bad multipart body: {}", e.body_text()))
    }
}

/// `POST /chat/upload/:chat_id`, multipart field `file` -> 201 `{media}`.
/// The file streams through the engine's limits; bytes of the upload are
/// charged to the user's upload budget as they arrive.
pub(crate) async fn upload(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(chat): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use futures::{StreamExt, TryStreamExt};
    let chat: ChatId = id(&chat)?;
    let limit = upload_body_limit(&app);
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError(Error::TooLarge(format!(
            "an upload may have at most {} bytes",
            limit - MULTIPART_SLACK
        ))));
    }
    let mut multipart = axum::extract::Multipart::from_request(request, &app)
        .await
        .map_err(|r| ApiError(Error::invalid(r.body_text())))?;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            continue;
        }
        let file_name = field.file_name().map(str::to_owned);
        let limiter = app.driver.limiter().clone();
        let user = actor.user_id.clone();
        let body = field
            .map_err(multipart_error)
            .and_then(move |chunk| {
                let charged = limiter
                    .check_upload(&user, chunk.len() as u64)
                    .map(|()| chunk)
                    .map_err(|retry_after| {
                        metrics::counter!(m::RATE_LIMITED).increment(1);
                        Error::RateLimited { retry_after }
                    });
                std::future::ready(charged)
            })
            .boxed();
        let upload = chat_core::engine::Upload::new(body).file_name(file_name);
        let record = app.engine.upload(&actor, chat, upload).await?;
        let media = to_json(chat_core::MediaRef::for_record(&record))?.0;
        return Ok((StatusCode::CREATED, Json(json!({ "media": media }))));
    }
    Err(ApiError(Error::invalid(
        "multipart field \"file\" is missing",
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct MediaParams {
    #[serde(default)]
    thumbnail: bool,
}

/// One `bytes=` range of a `Range` header; anything else (other units,
/// several ranges, nonsense) is ignored and the whole file served, as
/// RFC 9110 allows.
fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(ByteRange::Last(number(last)?)),
        (false, true) => Some(ByteRange::From(number(first)?)),
        (false, false) => Some(ByteRange::Bounded(number(first)?, number(last)?)),
        (true, true) => None,
    }
}

/// A file name as a `Content-Disposition` value: an ASCII fallback and the
/// UTF-8 name percent-encoded (RFC 6266).
fn disposition(kind: &str, name: Option<&str>) -> String {
    let Some(name) = name else {
        return kind.to_owned();
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `GET /chat/media/:id` (`?thumbnail=true`): the bytes, streamed, for
/// participants; honours a single `Range`.
pub(crate) async fn download(
    State(app): State<AppState>,
    Caller(actor): Caller,
    Path(media): Path<String>,
    Params(p): Params<MediaParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let media: chat_core::MediaId = id(&media)?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let download = app
        .engine
        .download(&actor, media, p.thumbnail, range)
        .await?;
    let (status, length, content_range) = match &download.served {
        Served::Whole => (StatusCode::OK, download.size, None),
        Served::Partial(r) => (
            StatusCode::PARTIAL_CONTENT,
            r.end - r.start,
            Some(format!("bytes {}-{}/{}", r.start, r.end - 1, download.size)),
        ),
        Served::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            0,
            Some(format!("bytes */{}", download.size)),
        ),
    };
    let kind = if download.record.kind == chat_core::MediaKind::File && !p.thumbnail {
        "attachment"
    } else {
        "inline"
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, download.mime.as_str())
        .header(header::CONTENT_LENGTH, length)
        .header(header::CACHE_CONTROL, "private")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_DISPOSITION,
            disposition(kind, download.record.name.as_deref()),
        );
    if let Some(content_range) = content_range {
        response = response.header(header::CONTENT_RANGE, content_range);
    }
    let body = if status == StatusCode::RANGE_NOT_SATISFIABLE {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from_stream(download.body)
    };
    response.body(body).map_err(|e| ApiError(Error::backend(e)))
}

/// `GET /users/me/export`: everything the engine holds about the caller
/// (see [`ChatEngine::export`](chat_core::ChatEngine::export)), streamed
/// as it is read. A store error midway ends the body early, so a client
/// sees a document that does not parse rather than a partial one that does.
pub(crate) async fn export(
    State(app): State<AppState>,
    Caller(actor): Caller,
) -> Result<Response, ApiError> {
    let name = format!("export-{}.json", actor.user_id);
    let body = app.engine.export(&actor)?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_DISPOSITION,
            disposition("attachment", Some(&name)),
        )
        .body(axum::body::Body::from_stream(body))
        .map_err(|e| ApiError(Error::backend(e)))
}

#[cfg(test)]
mod media_tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::Bounded(0, 99)));
        assert_eq!(parse_range("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Last(5)));
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=-"), None);
        assert_eq!(parse_range("bytes=a-b"), None);
    }

    #[test]
    fn dispositions_escape_names() {
        assert_eq!(disposition("inline", None), "inline");
        assert_eq!(
            disposition("attachment", Some("ré\"port.pdf")),
            "attachment; filename=\"r__port.pdf\"; filename*=UTF-8''r%C3%A9%22port.pdf"
        );
    }
}
