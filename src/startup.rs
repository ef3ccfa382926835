//! `sessiond serve`: builds the actors from the configuration, binds the listener, runs until
//! SIGTERM/SIGINT, then flushes the fallback store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_http::HttpService;
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _, map_config};
use actix_web::dev::AppConfig;
use actix_web::http::KeepAlive;
use actix_web::{App, web};
use sessiond_actors::backend::{Backend, ConfirmCache, DegradedPolicy, ModeFlag, RedisSide};
use sessiond_actors::breaker::{BreakerSettings, Clock, SharedBreaker, SystemClock};
use sessiond_actors::coordinator::{Coordinator, CoordinatorRedis, random_instance_id};
use sessiond_actors::domain::now_seconds;
use sessiond_actors::fallback_store::FallbackStore;
use sessiond_actors::health::Watch;
use sessiond_actors::messages::{FlushStore, SessionSource, Subscribe};
use sessiond_actors::redis_store::{RedisSettings, RedisStore};
use sessiond_actors::session_validator::{Pipeline, SessionValidator, ValidatorSettings};
use sessiond_actors::store::{StoreCore, StoreOptions, StoreTuning};
use sessiond_actors::token::{self, Verifier};
use sessiond_actors::token_adapter::TokenAdapter;
use sessiond_actors::ws_gateway::{GatewayLimits, WsGateway};

use crate::api_key::ApiKeys;
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::notify::{ModeStatus, Notifier};
use crate::request_id::{IdSource, RequestIds};
use crate::routes::health::Operations;
use crate::routes::{self, Readiness};
use crate::self_test::SelfTest;
use crate::upgrade::Upgrades;
use crate::{config, dev_keys, notify, ws};

/// Redis connections in the pool (each HTTP worker's requests share them).
const REDIS_POOL_SIZE: usize = 32;
/// Bounds of the Redis probe period (it is `breaker.op_timeout_ms` within these).
const PROBE_MIN: Duration = Duration::from_millis(100);
const PROBE_MAX: Duration = Duration::from_secs(1);

/// How long in-flight requests get to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long WebSockets get to close (1001) after a stop signal, before the server stops.
const WS_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a connection being closed waits for the client's side (actix-web's
/// `HttpServer` default `client_disconnect_timeout`).
const CLIENT_DISCONNECT_GRACE: Duration = Duration::from_secs(1);
/// The listen backlog (actix-web's `HttpServer` default).
const LISTEN_BACKLOG: i32 = 1024;
/// How long the final flush of the fallback store may take at shutdown.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// What the HTTP handlers need from the configuration.
pub struct HttpSettings {
    /// `ws.cookie_name`: the cookie forward-auth (and later the WebSocket) reads a token from.
    pub cookie_name: String,
}

/// A start-up failure, printed as one line and exit 1.
#[derive(Debug)]
pub struct StartError(pub String);

impl<E: std::fmt::Display> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError(e.to_string())
    }
}

/// Everything built before the actor system starts (all of it can fail with a clear message).
struct Prepared {
    config: Config,
    verifier: Arc<Verifier>,
    api_keys: ApiKeys,
    store: StoreCore,
    listen: SocketAddr,
    dev_note: Option<dev_keys::DevKeys>,
}

fn prepare(args: &ServeArgs) -> Result<Prepared, StartError> {
    let mut config = config::load(args.config.as_deref())?;
    let data_dir = config.data_dir();
    let dev_note = if args.dev {
        let keys = dev_keys::ensure_dev_keys(&data_dir).map_err(|e| {
            StartError(format!("--dev: cannot write keys into {}: {e}", data_dir.display()))
        })?;
        dev_keys::apply_dev_keys(&mut config, &keys);
        Some(keys)
    } else {
        None
    };
    token::crypto_self_test().map_err(|e| StartError(format!("crypto backend unusable: {e}")))?;
    let verifier = Arc::new(Verifier::new(config.token_settings()?)?);
    let api_keys = config.api_keys()?;
    log::info!("{} API key(s) configured", api_keys.len());
    if api_keys.is_empty() {
        log::warn!(
            "no API key configured (api.keys, api.keys_file): management routes will refuse every request"
        );
    }
    let listen: SocketAddr = config
        .server
        .listen
        .parse()
        .map_err(|e| StartError(format!("config key server.listen: {e}")))?;
    let tuning =
        StoreTuning { max_journal: config.fallback.max_journal_entries, ..StoreTuning::default() };
    let options = StoreOptions {
        data_dir: data_dir.clone(),
        fsync: config.fsync_mode(),
        max_entries: config.fallback.max_entries,
        max_ttl_seconds: config.sessions.max_ttl_seconds,
    };
    let (store, report) = StoreCore::open_with(options, tuning, now_seconds())
        .map_err(|e| StartError(format!("fallback store in {}: {e}", data_dir.display())))?;
    log::info!(
        "fallback store loaded from {}: {} sessions, {} revocations, {} records in {} ms{}",
        data_dir.display(),
        report.sessions,
        report.tombstones,
        report.records,
        report.duration_ms,
        if report.truncated_bytes > 0 {
            format!(" ({} bytes of torn tail cut off)", report.truncated_bytes)
        } else {
            String::new()
        }
    );
    Ok(Prepared { config, verifier, api_keys: ApiKeys::new(&api_keys), store, listen, dev_note })
}

/// Runs `sessiond serve`; returns the process exit code.
pub fn serve(args: &ServeArgs) -> i32 {
    let prepared = match prepare(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sessiond: {}", e.0);
            return 1;
        }
    };
    let system = actix_rt::System::new();
    match system.block_on(run(prepared)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sessiond: {}", e.0);
            1
        }
    }
}

async fn run(p: Prepared) -> Result<(), StartError> {
    let config = p.config;
    let instance_id = random_instance_id();
    log::info!("instance {instance_id} starting");

    let store_arbiter = Arbiter::new();
    let core = p.store;
    let reader = core.reader();
    // Writes journaled before a crash make the instance degraded from its first answer until
    // they are replayed: read now, before the store moves into its actor and before ready.
    let journaled_at_start = core.journal_len();
    let store =
        FallbackStore::start_in_arbiter(&store_arbiter.handle(), move |_| FallbackStore::new(core));
    let notifier = Notifier::from_env();
    let self_test = SelfTest::new().map_err(StartError)?;
    let mut breakers = Vec::new();
    let (redis, coordinator) = match redis_parts(&config, &store, journaled_at_start)? {
        Some((side, coord)) => {
            breakers.push(side.breaker.clone());
            breakers.push(coord.bus_breaker.clone());
            log::info!(
                "Redis mode: {} (key prefix {:?})",
                config.sessions.redis_url_for_log(),
                config.sessions.key_prefix
            );
            let coordinator = Coordinator::with_redis(instance_id.clone(), coord).start();
            (Some(side), coordinator)
        }
        None => (None, Coordinator::new(instance_id.clone()).start()),
    };
    let token_adapter = TokenAdapter::new(Arc::clone(&p.verifier)).start();
    let gateway = WsGateway::new(
        instance_id.clone(),
        GatewayLimits {
            max_connections: config.ws.max_connections,
            max_per_user: config.ws.max_connections_per_user,
        },
        Some(coordinator.clone().recipient()),
    )
    .start();

    for (name, actor) in [
        ("fallback_store", store.clone().recipient()),
        ("ws_gateway", gateway.clone().recipient()),
        ("token_adapter", token_adapter.clone().recipient()),
    ] {
        coordinator.do_send(Watch { name, actor });
    }
    coordinator.do_send(Subscribe(ModeStatus(notifier.clone()).start().recipient()));
    coordinator.do_send(SessionSource(gateway.clone().recipient()));

    let pipeline = Arc::new(Pipeline {
        verifier: p.verifier,
        backend: Backend {
            store: store.clone(),
            reader,
            redis,
            max_ttl_seconds: config.sessions.max_ttl_seconds,
            journal_writes: true,
        },
        events: coordinator.clone().recipient(),
        settings: ValidatorSettings {
            max_ttl_seconds: config.sessions.max_ttl_seconds,
            refresh_window_seconds: config.tokens.refresh_window_seconds,
            degraded_policy: match config.degraded.policy {
                config::DegradedPolicy::JwtOnly => DegradedPolicy::JwtOnly,
                config::DegradedPolicy::FailClosed => DegradedPolicy::FailClosed,
            },
        },
    });
    let max_body = config.server.max_body_bytes;
    let request_deadline = Duration::from_millis(config.server.request_timeout_ms);
    let api_keys = web::Data::new(p.api_keys);
    let settings = web::Data::new(HttpSettings { cookie_name: config.ws.cookie_name.clone() });
    let readiness = Readiness::default();
    let readiness_data = web::Data::new(readiness.clone());
    let coordinator_data = web::Data::new(coordinator.clone());
    let ws_path = config.ws.path.clone();
    let ws_state = web::Data::new(ws::WsState {
        gateway: gateway.clone(),
        settings: Arc::new(ws::WsSettings::from_config(&config)),
    });
    let ids = Arc::new(IdSource::new(instance_id.clone()));
    let store_mode = match (breakers.is_empty(), journaled_at_start > 0) {
        (true, _) => "embedded store",
        (false, false) => "Redis",
        (false, true) => "Redis; degraded until the journal of an earlier run is replayed",
    };
    let operations = web::Data::new(Operations {
        instance_id: instance_id.clone(),
        token_adapter: token_adapter.recipient(),
        store: store.clone(),
        gateway: gateway.clone(),
        coordinator: coordinator.clone(),
        breakers,
        pipeline: Arc::clone(&pipeline),
        self_test,
    });

    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let keep_alive = match config.server.keep_alive_seconds {
        0 => KeepAlive::Disabled,
        n => KeepAlive::Timeout(Duration::from_secs(n)),
    };
    let client_request_timeout = Duration::from_millis(config.server.client_request_timeout_ms);
    let cannot_listen = |e: std::io::Error| {
        StartError(format!("cannot listen on {} (server.listen): {e}", p.listen))
    };
    let listener = tcp_listener(p.listen).map_err(cannot_listen)?;
    let addr = listener.local_addr().map_err(cannot_listen)?;
    let bound = vec![addr];
    let app = move |validator: Addr<SessionValidator>| {
        App::new()
            .app_data(operations.clone())
            .app_data(web::Data::new(validator))
            .app_data(api_keys.clone())
            .app_data(settings.clone())
            .app_data(readiness_data.clone())
            .app_data(coordinator_data.clone())
            .app_data(ws_state.clone())
            .app_data(web::PayloadConfig::new(max_body))
            .wrap(RequestIds::new(Arc::clone(&ids), max_body, request_deadline))
            .route(&ws_path, web::get().to(ws::handshake::upgrade))
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
    };
    let watcher = coordinator.clone();
    let builder = actix_server::Server::build();
    let shutdown_signal = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        // actix counts connections per worker: the total is split evenly (rounded up).
        .max_concurrent_connections(config.server.max_connections.div_ceil(workers))
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .listen(format!("actix-web-service-{addr}"), listener, move || {
            // One validator per worker: requests reach it without crossing threads. The
            // upgrade service answers through its own instance of the same App.
            let validator = SessionValidator::new(Arc::clone(&pipeline)).start();
            watcher
                .do_send(Watch { name: "session_validator", actor: validator.clone().recipient() });
            let app_factory = |validator| {
                map_config(
                    app(validator).into_factory().map_err(|e: actix_web::Error| e.error_response()),
                    // HttpServer would pass the listener's host and address (through an API
                    // actix-web keeps private); they only feed `connection_info()` for requests
                    // without a Host header, which no route reads.
                    |()| AppConfig::default(),
                )
            };
            let signal = shutdown_signal.clone();
            HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = signal.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(keep_alive)
                .client_request_timeout(client_request_timeout)
                .client_disconnect_timeout(CLIENT_DISCONNECT_GRACE)
                .h1_allow_half_closed(true)
                .local_addr(addr)
                .upgrade(Upgrades::new(app_factory(validator.clone()), CLIENT_DISCONNECT_GRACE))
                .finish(app_factory(validator))
                .tcp()
        })
        .map_err(cannot_listen)?
        .run();
    // Our own handlers, installed before anyone is told we are ready: actix installs its own
    // only once the server is first polled, and a SIGTERM before that would kill the process
    // without the flush.
    stop_on_signals(server.handle(), gateway, notifier.clone())?;
    #[cfg(debug_assertions)]
    test_hooks::install(&store)?;
    readiness.set_ready();
    for addr in &bound {
        // The one line tests and scripts wait for; stdout, so it is not mixed with the log.
        println!("sessiond {} listening on http://{addr}", env!("CARGO_PKG_VERSION"));
    }
    if let (Some(keys), Some(addr)) = (&p.dev_note, bound.first()) {
        println!("{}", dev_keys::dev_instructions(&config, keys, *addr));
    }
    log::info!("ready on {bound:?} with {workers} workers");
    notifier.send(&format!("READY=1\nSTATUS=serving ({store_mode})"));
    if let Some(period) = notify::watchdog_period().filter(|_| notifier.enabled()) {
        actix_rt::spawn(notify::run_watchdog(notifier.clone(), period, coordinator.clone()));
    }

    server.await.map_err(|e| StartError(format!("server failed: {e}")))?;
    log::info!("stopping: flushing the fallback store");
    let flushed = match tokio::time::timeout(FLUSH_GRACE, store.send(FlushStore)).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("fallback store flush failed: {e}")),
        Ok(Err(e)) => Err(format!("fallback store unreachable at shutdown: {e}")),
        Err(_) => Err(format!("fallback store flush took over {} s", FLUSH_GRACE.as_secs())),
    };
    store_arbiter.stop();
    System::current().stop();
    match flushed {
        Ok(()) => {
            log::info!("fallback store flushed; exiting");
            Ok(())
        }
        Err(e) => Err(StartError(e)),
    }
}

/// Stops the server gracefully on the first SIGTERM or SIGINT: WebSockets are closed with
/// 1001 first (bounded by `WS_CLOSE_GRACE`), then the server stops.
fn stop_on_signals(
    handle: actix_server::ServerHandle,
    gateway: Addr<WsGateway>,
    notifier: Notifier,
) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGHUP's default would end the process without draining or flushing; there is no
    // configuration reload, so it is logged and ignored.
    let mut hup = signal(SignalKind::hangup())?;
    actix_rt::spawn(async move {
        while hup.recv().await.is_some() {
            log::warn!(
                "SIGHUP ignored: the configuration is read at start only; restart to apply changes"
            );
        }
    });
    actix_rt::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        log::info!("{name} received: stopping gracefully");
        notifier.send("STOPPING=1\nSTATUS=stopping: closing WebSockets, draining requests");
        ws::close_all(&gateway, WS_CLOSE_GRACE).await;
        handle.stop(true).await;
    });
    Ok(())
}

/// The listening socket, as actix-web's `HttpServer::bind` makes it: `SO_REUSEADDR`, a
/// backlog of `LISTEN_BACKLOG`.
fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The Redis side of the pipeline and of the Coordinator, when `sessions.redis_url` is set.
fn redis_parts(
    config: &Config,
    store: &Addr<FallbackStore>,
    journaled_at_start: usize,
) -> Result<Option<(RedisSide, CoordinatorRedis)>, StartError> {
    if config.sessions.redis_url.is_empty() {
        return Ok(None);
    }
    let b = &config.breaker;
    let op_timeout = Duration::from_millis(b.op_timeout_ms);
    let redis = RedisStore::new(RedisSettings {
        url: config.sessions.redis_url.clone(),
        key_prefix: config.sessions.key_prefix.clone(),
        pool_size: REDIS_POOL_SIZE,
        connect_timeout: op_timeout,
        max_ttl_seconds: config.sessions.max_ttl_seconds,
    })
    .map_err(|e| StartError(format!("config key sessions.redis_url: {e}")))?;
    let settings = BreakerSettings {
        failure_threshold: b.failure_threshold,
        success_threshold: b.success_threshold,
        open_for: Duration::from_secs(b.open_seconds),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let (notify, transitions) = tokio::sync::mpsc::unbounded_channel();
    let breaker = SharedBreaker::new("redis", settings, Arc::clone(&clock), notify.clone());
    let bus_breaker = SharedBreaker::new("event_bus", settings, clock, notify);
    let mode = Arc::new(ModeFlag::default());
    mode.set_degraded(journaled_at_start > 0);
    let side = RedisSide {
        redis,
        breaker,
        op_timeout,
        mode,
        bus_up: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        confirmed: Arc::new(ConfirmCache::default()),
    };
    let coordinator = CoordinatorRedis {
        side: side.clone(),
        bus_breaker,
        transitions,
        store: store.clone(),
        probe_interval: op_timeout.clamp(PROBE_MIN, PROBE_MAX),
        max_ttl_seconds: config.sessions.max_ttl_seconds,
    };
    Ok(Some((side, coordinator)))
}

/// Test hooks, compiled into debug builds only (the test suite runs the debug binary; a
/// release build has none of this) and armed only by `SESSIOND_TEST_HOOKS=1`.
#[cfg(debug_assertions)]
mod test_hooks {
    use std::time::Duration;

    use actix::Addr;
    use sessiond_actors::fallback_store::FallbackStore;
    use sessiond_actors::messages::Wedge;

    use super::StartError;

    /// `SIGUSR2` wedges the fallback store actor for an hour: its thread sleeps, so it stops
    /// answering, as a deadlocked actor would.
    pub fn install(store: &Addr<FallbackStore>) -> Result<(), StartError> {
        if std::env::var("SESSIOND_TEST_HOOKS").as_deref() != Ok("1") {
            return Ok(());
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let store = store.clone();
        log::warn!("test hooks armed (SESSIOND_TEST_HOOKS=1): SIGUSR2 wedges the fallback store");
        actix_rt::spawn(async move {
            while usr2.recv().await.is_some() {
                store.do_send(Wedge(Duration::from_secs(3600)));
            }
        });
        Ok(())
    }
}
