//! Compiling, loading and calling plugins. Each call gets a fresh store:
//! nothing a plugin does in one step survives into the next.
//!
//! Instances come from wasmtime's pooling allocator: the memories, tables
//! and fiber stacks of [`RuntimeLimits::max_concurrent_calls`] calls are
//! reserved once and reused, so a call does not map and unmap them (on
//! demand that was most of a step's overhead). A memory is wiped when its
//! call ends (its pages are decommitted), so a reused slot starts as
//! zeroes, as a fresh one does.

use super::bindings::tumbler::rotator::types as wit;
use super::bindings::{Rotator, RotatorPre};
use super::cache::ComponentCache;
use super::capabilities::Grants;
use super::dynamic_bindings::DynamicRotatorPre;
use super::dynamic_bindings::exports::tumbler::rotator::dynamic as wit_dynamic;
use super::output::{CapturedOutput, Redactions};
use crate::model::SecretName;
use crate::store::Store as SecretStore;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use zeroize::Zeroizing;

/// Bounds applied to every plugin call.
#[derive(Clone, Debug)]
pub struct RuntimeLimits {
    pub memory_bytes: usize,
    pub step_timeout: Duration,
    pub max_concurrent_calls: usize,
    pub compile_timeout: Duration,
    pub max_concurrent_compiles: usize,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            memory_bytes: 64 << 20,
            step_timeout: Duration::from_secs(30),
            max_concurrent_calls: 16,
            compile_timeout: Duration::from_secs(60),
            max_concurrent_compiles: 1,
        }
    }
}

/// The steps of a rotation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Create,
    Set,
    Test,
    Finish,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Create => "create",
            Step::Set => "set",
            Step::Test => "test",
            Step::Finish => "finish",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginErrorKind {
    /// Not a component implementing the world.
    Invalid,
    /// The wall-clock limit of the step passed.
    Timeout,
    /// The plugin grew its memory past the limit.
    OutOfMemory,
    /// The plugin trapped (a panic, `unreachable`, a bad access...).
    Trap,
    /// The plugin returned `step-error.retryable`.
    Retryable,
    /// The plugin returned `step-error.fatal`.
    Fatal,
    /// The host failed.
    Host,
}

/// Why a plugin call failed. The message may hold plugin text, so it is
/// shown only to callers who may read the secret; `kind` is safe anywhere.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub kind: PluginErrorKind,
    pub message: String,
}

impl PluginError {
    fn new(kind: PluginErrorKind, message: impl Into<String>) -> Self {
        PluginError { kind, message: message.into() }
    }

    pub fn code(&self) -> &'static str {
        match self.kind {
            PluginErrorKind::Invalid => "plugin_invalid",
            PluginErrorKind::Timeout => "plugin_timeout",
            PluginErrorKind::OutOfMemory => "plugin_out_of_memory",
            PluginErrorKind::Trap => "plugin_trap",
            PluginErrorKind::Retryable => "plugin_retryable",
            PluginErrorKind::Fatal => "plugin_fatal",
            PluginErrorKind::Host => "host_error",
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a plugin says about itself.
#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub params_schema: Option<serde_json::Value>,
    pub capabilities: Vec<String>,
    pub dynamic: bool,
}

/// A compiled, pre-instantiated plugin.
pub struct LoadedPlugin {
    pub sha256: String,
    pub info: PluginInfo,
    /// Whether the native code came from the on-disk cache (not recompiled).
    pub from_cache: bool,
    pre: RotatorPre<PluginState>,
    /// Present when the component also exports `dynamic`.
    dynamic_pre: Option<DynamicRotatorPre<PluginState>>,
}

/// Everything a call may use besides the plugin itself.
#[derive(Clone, Default)]
pub struct CallContext {
    pub plugin: String,
    pub secret: Option<SecretName>,
    pub grants: Arc<Grants>,
    pub store: Option<SecretStore>,
    /// Values the host fills in for `secret-ref.current` / `.pending`.
    pub current_value: Option<Arc<Zeroizing<String>>>,
    pub pending_value: Option<Arc<Zeroizing<String>>>,
    /// Where capability calls are recorded (absent in offline tools and tests).
    pub audit: Option<crate::audit::AuditLog>,
}

/// What a step call produced.
pub struct StepOutcome {
    pub result: Result<Option<Zeroizing<String>>, PluginError>,
    /// Captured stdout, stderr and `log` lines, capped and redacted.
    pub log: String,
    pub duration: Duration,
}

/// Per-store state: WASI (granting nothing), the resource table, limits,
/// and what the capabilities need.
pub struct PluginState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limiter: MemoryLimiter,
    pub(crate) call: CallContext,
    pub(crate) output: CapturedOutput,
    pub(crate) redactions: Redactions,
    pub(crate) budget: super::capabilities::Budget,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The plugin memory limit, over all of a plugin's memories together: a
/// component may hold several (one per core instance that defines one), and
/// a limit per memory would let it take the limit once for each.
struct MemoryLimiter {
    limit: usize,
    /// Bytes of every memory of the call's instance, as granted here (a
    /// growth granted and then failed stays counted: the count errs high).
    used: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter { limit, used: 0, exceeded: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    /// Called for each memory as it is made (`current` 0, `desired` its
    /// initial size) and for each growth.
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let used = self.used.saturating_sub(current).saturating_add(desired);
        if used > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!("memory limit of {} bytes exceeded", self.limit));
        }
        self.used = used;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: RuntimeLimits,
    calls: Arc<Semaphore>,
    compiles: Arc<Semaphore>,
    cache: ComponentCache,
    ticker: Arc<EpochTicker>,
}

/// What one plugin's component may hold, at most, in all and in any one of
/// its modules (a WASI component built with wit-bindgen holds a few of
/// each: its module, the WASI adapter and their glue). The upload of a
/// component over a bound is refused, naming it ([`compile_refusal`]).
const MAX_CORE_INSTANCES_PER_PLUGIN: u32 = 32;
const MAX_MEMORIES_PER_PLUGIN: u32 = 4;
const MAX_TABLES_PER_PLUGIN: u32 = 32;

/// The pool: room for every call that may run at once (each has a store of
/// its own, holding one component instance), so a call never waits for a
/// slot nor finds none. A memory may grow past the plugin memory limit in
/// the pool, so that the limit (the store's limiter) is what stops it,
/// with its own error.
fn pool_config(limits: &RuntimeLimits) -> PoolingAllocationConfig {
    let calls = u32::try_from(limits.max_concurrent_calls).unwrap_or(u32::MAX).max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(calls)
        .total_stacks(calls)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_PLUGIN)
        .total_core_instances(calls.saturating_mul(MAX_CORE_INSTANCES_PER_PLUGIN))
        .max_memories_per_component(MAX_MEMORIES_PER_PLUGIN)
        .max_memories_per_module(MAX_MEMORIES_PER_PLUGIN)
        .total_memories(calls.saturating_mul(MAX_MEMORIES_PER_PLUGIN))
        .max_tables_per_component(MAX_TABLES_PER_PLUGIN)
        .max_tables_per_module(MAX_TABLES_PER_PLUGIN)
        .total_tables(calls.saturating_mul(MAX_TABLES_PER_PLUGIN))
        .max_memory_size(limits.memory_bytes.saturating_mul(2).min(4 << 30));
    pool
}

/// Why a component did not compile. Past the instance pool's bounds it is
/// valid WebAssembly, only bigger than a plugin may be: say so, with the
/// bounds, rather than "not valid".
fn compile_refusal(e: &wasmtime::Error, limits: &RuntimeLimits) -> String {
    let detail = format!("{e:#}");
    if !detail.contains("pooling allocator") {
        return format!("not a valid component: {detail}");
    }
    format!(
        "the component is bigger than a plugin may be: at most {MAX_CORE_INSTANCES_PER_PLUGIN} core instances, \
         {MAX_MEMORIES_PER_PLUGIN} memories and {MAX_TABLES_PER_PLUGIN} tables, with every memory's initial size \
         within the plugin memory limit ({} MiB); wasmtime says: {detail}",
        limits.memory_bytes >> 20
    )
}

/// How often the epoch advances while a plugin runs; a busy plugin yields
/// to tokio this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How often the idle ticker wakes to see whether the runtime is gone.
const EPOCH_IDLE_CHECK: Duration = Duration::from_secs(1);

/// Advances the engine's epoch every [`EPOCH_TICK`] while a plugin call
/// runs, and sleeps while none does: an idle server used to wake a hundred
/// times a second for it, nine in ten of its wake-ups.
struct EpochTicker {
    counts: Arc<TickerCounts>,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct TickerCounts {
    /// Calls running now.
    calls: AtomicUsize,
    /// Epochs advanced so far.
    ticks: AtomicU64,
}

impl EpochTicker {
    fn start(engine: &Engine) -> std::io::Result<Arc<EpochTicker>> {
        let weak = engine.weak();
        let counts = Arc::new(TickerCounts::default());
        let running = counts.clone();
        let thread = std::thread::Builder::new().name("tumbler-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                if running.calls.load(Ordering::SeqCst) == 0 {
                    drop(engine);
                    // Until a call starts (it unparks this thread), or now
                    // and then to end once the runtime is gone.
                    std::thread::park_timeout(EPOCH_IDLE_CHECK);
                    continue;
                }
                engine.increment_epoch();
                drop(engine);
                running.ticks.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        Ok(Arc::new(EpochTicker { counts, thread: thread.thread().clone() }))
    }

    /// Ticks until the returned guard of the last running call is dropped.
    fn call(self: &Arc<Self>) -> TickingCall {
        if self.counts.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.thread.unpark();
        }
        TickingCall(self.clone())
    }
}

struct TickingCall(Arc<EpochTicker>);

impl Drop for TickingCall {
    fn drop(&mut self) {
        self.0.counts.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runtime {
    pub fn new(limits: RuntimeLimits, cache: ComponentCache) -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(&limits)));
        let engine = Engine::new(&config).map_err(wasmtime_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasmtime_error)?;
        Rotator::add_to_linker::<PluginState, wasmtime::component::HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(wasmtime_error)?;
        let ticker = EpochTicker::start(&engine)?;
        Ok(Arc::new(Runtime {
            ticker,
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls)),
            compiles: Arc::new(Semaphore::new(limits.max_concurrent_compiles)),
            engine,
            linker,
            limits,
            cache,
        }))
    }

    pub fn limits(&self) -> &RuntimeLimits {
        &self.limits
    }

    /// Checks the bytes are a component (not a core module or garbage),
    /// then compiles them in the bounded pool, with a time limit.
    pub async fn compile(&self, wasm: Arc<Vec<u8>>) -> Result<Component, PluginError> {
        check_is_component(&wasm)?;
        let _permit = self.compiles.acquire().await.map_err(|_| host("compile pool closed"))?;
        let engine = self.engine.clone();
        let job = tokio::task::spawn_blocking(move || Component::new(&engine, wasm.as_slice()));
        match tokio::time::timeout(self.limits.compile_timeout, job).await {
            Err(_) => Err(PluginError::new(
                PluginErrorKind::Invalid,
                format!("compiling the component took longer than {:?}", self.limits.compile_timeout),
            )),
            Ok(Err(e)) => Err(host(format!("compile task failed: {e}"))),
            Ok(Ok(Err(e))) => Err(PluginError::new(PluginErrorKind::Invalid, compile_refusal(&e, &self.limits))),
            Ok(Ok(Ok(c))) => Ok(c),
        }
    }

    /// Loads a plugin: from the compiled cache when its MAC holds, else
    /// compiled (and cached); then checked against the world and asked for
    /// its `info`.
    pub async fn load(&self, sha256: &str, wasm: Arc<Vec<u8>>) -> Result<LoadedPlugin, PluginError> {
        let (component, from_cache) = match self.cache.load(&self.engine, sha256) {
            Some(c) => (c, true),
            None => {
                let c = self.compile(wasm).await?;
                if let Err(e) = self.cache.store(sha256, &c) {
                    tracing::warn!(sha256, error = %e, "could not write the compiled plugin cache");
                }
                (c, false)
            }
        };
        self.prepare(sha256, &component, from_cache).await
    }

    async fn prepare(
        &self,
        sha256: &str,
        component: &Component,
        from_cache: bool,
    ) -> Result<LoadedPlugin, PluginError> {
        let instance_pre = self.linker.instantiate_pre(component).map_err(|e| {
            PluginError::new(
                PluginErrorKind::Invalid,
                format!("the component imports something tumbler does not provide (only tumbler:rotator@0.1.x up to 0.1.1, and WASI): {e:#}"),
            )
        })?;
        let dynamic_pre = DynamicRotatorPre::new(instance_pre.clone()).ok();
        let pre = RotatorPre::new(instance_pre).map_err(|e| {
            PluginError::new(
                PluginErrorKind::Invalid,
                format!("the component does not implement the tumbler:rotator@0.1 world `rotator`: {e:#}"),
            )
        })?;
        let mut plugin = LoadedPlugin { sha256: sha256.to_owned(), info: empty_info(), from_cache, pre, dynamic_pre };
        let outcome = self.call(&plugin, CallContext::default(), Redactions::default(), Call::Info).await;
        plugin.info = match outcome.result {
            Ok(Some(json)) => serde_json::from_str(&json).map_err(|e| host(format!("plugin info: {e}")))?,
            Ok(None) => return Err(host("info returned nothing")),
            Err(e) => {
                return Err(PluginError::new(PluginErrorKind::Invalid, format!("calling `info` failed: {e}")));
            }
        };
        if plugin.info.dynamic && plugin.dynamic_pre.is_none() {
            return Err(PluginError::new(
                PluginErrorKind::Invalid,
                "the plugin says it is dynamic but does not export tumbler:rotator/dynamic@0.1",
            ));
        }
        if !plugin.info.dynamic {
            // Only what the plugin claims is ever called.
            plugin.dynamic_pre = None;
        }
        Ok(plugin)
    }

    /// Runs one rotation step of `plugin` with the given input.
    pub async fn run_step(
        &self,
        plugin: &LoadedPlugin,
        step: Step,
        input: wit::StepInput,
        ctx: CallContext,
    ) -> StepOutcome {
        let mut redactions = Redactions::default();
        for v in [&input.current, &input.pending, &input.previous, &input.fell_off].into_iter().flatten() {
            redactions.add(&v.value);
        }
        for v in &input.older {
            redactions.add(&v.value);
        }
        self.call(plugin, ctx, redactions, Call::Step(step, input)).await
    }

    /// Asks a dynamic plugin whether a role's parameters are acceptable.
    pub async fn check_role(&self, plugin: &LoadedPlugin, role: &str, params: &str, ctx: CallContext) -> StepOutcome {
        let call = Call::CheckRole { role: role.to_owned(), params: params.to_owned() };
        self.call(plugin, ctx, Redactions::default(), call).await
    }

    /// Issues a leased credential. On success the value is the JSON object
    /// `{"credential", "revoke_handle"}` (both strings).
    pub async fn issue(
        &self,
        plugin: &LoadedPlugin,
        request: wit_dynamic::IssueRequest,
        ctx: CallContext,
    ) -> StepOutcome {
        self.call(plugin, ctx, Redactions::default(), Call::Issue(request)).await
    }

    /// Moves a leased credential's expiry at the target.
    pub async fn renew(
        &self,
        plugin: &LoadedPlugin,
        role: &str,
        params: &str,
        handle: &str,
        expires_at: &str,
        ctx: CallContext,
    ) -> StepOutcome {
        let mut redactions = Redactions::default();
        redactions.add(handle);
        let call = Call::Renew {
            role: role.to_owned(),
            params: params.to_owned(),
            handle: Zeroizing::new(handle.to_owned()),
            expires_at: expires_at.to_owned(),
        };
        self.call(plugin, ctx, redactions, call).await
    }

    /// Revokes a leased credential given its revoke handle.
    pub async fn revoke(
        &self,
        plugin: &LoadedPlugin,
        role: &str,
        params: &str,
        handle: &str,
        ctx: CallContext,
    ) -> StepOutcome {
        let mut redactions = Redactions::default();
        redactions.add(handle);
        let call = Call::Revoke {
            role: role.to_owned(),
            params: params.to_owned(),
            handle: Zeroizing::new(handle.to_owned()),
        };
        self.call(plugin, ctx, redactions, call).await
    }

    async fn call(&self, plugin: &LoadedPlugin, ctx: CallContext, redactions: Redactions, call: Call) -> StepOutcome {
        let started = Instant::now();
        let who = if ctx.plugin.is_empty() { plugin.info.name.clone() } else { ctx.plugin.clone() };
        let what = match &call {
            Call::Info => "info",
            Call::Step(step, _) => step.as_str(),
            Call::CheckRole { .. } => "check-role",
            Call::Issue(_) => "issue",
            Call::Renew { .. } => "renew",
            Call::Revoke { .. } => "revoke",
        };
        let output = CapturedOutput::default();
        let Ok(_permit) = self.calls.acquire().await else {
            return StepOutcome {
                result: Err(host("plugin call pool closed")),
                log: String::new(),
                duration: started.elapsed(),
            };
        };
        // The epoch advances (so the plugin yields, and its time limit
        // holds) for as long as this call runs.
        let _ticking = self.ticker.call();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let state = PluginState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
            call: ctx,
            output: output.clone(),
            redactions,
            budget: Default::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let result = tokio::time::timeout(self.limits.step_timeout, invoke(plugin, &mut store, call)).await;
        let state = store.data_mut();
        let result = match result {
            Err(_) => Err(PluginError::new(
                PluginErrorKind::Timeout,
                format!("the step did not finish within {:?}", self.limits.step_timeout),
            )),
            Ok(Err(_)) if state.limiter.exceeded => Err(PluginError::new(
                PluginErrorKind::OutOfMemory,
                format!("the plugin grew its memory past the limit of {} MiB", self.limits.memory_bytes >> 20),
            )),
            Ok(Err(e)) => Err(trap_error(&e)),
            Ok(Ok(Err(step_error))) => Err(step_error),
            Ok(Ok(Ok(value))) => {
                if let Some(v) = &value {
                    state.redactions.add(v);
                }
                Ok(value)
            }
        };
        let log = state.output.finish(&state.redactions);
        // Errors name the plugin and the step, so an operator knows where to look.
        // Plugin-written text is redacted like the log: it may quote a value.
        let result = result.map_err(|e| PluginError {
            message: format!("plugin '{who}' step `{what}`: {}", state.redactions.apply(&e.message)),
            ..e
        });
        StepOutcome { result, log, duration: started.elapsed() }
    }
}

enum Call {
    Info,
    Step(Step, wit::StepInput),
    CheckRole { role: String, params: String },
    Issue(wit_dynamic::IssueRequest),
    Renew { role: String, params: String, handle: Zeroizing<String>, expires_at: String },
    Revoke { role: String, params: String, handle: Zeroizing<String> },
}

/// Instantiates and calls. The outer error is a trap; the inner one is the
/// plugin's own `step-error`.
async fn invoke(
    plugin: &LoadedPlugin,
    store: &mut Store<PluginState>,
    call: Call,
) -> wasmtime::Result<Result<Option<Zeroizing<String>>, PluginError>> {
    if !matches!(call, Call::Info | Call::Step(..)) {
        return invoke_dynamic(plugin, store, call).await;
    }
    let rotator = plugin.pre.instantiate_async(&mut *store).await?;
    let step_result = match call {
        Call::Info => {
            let info = rotator.call_info(&mut *store).await?;
            let params_schema = match info.params_schema {
                Some(s) => Some(
                    serde_json::from_str(&s).map_err(|e| wasmtime::format_err!("params-schema is not JSON: {e}"))?,
                ),
                None => None,
            };
            let info = PluginInfo {
                name: info.name,
                version: info.version,
                description: info.description,
                params_schema,
                capabilities: info.capabilities,
                dynamic: info.dynamic,
            };
            return Ok(Ok(Some(Zeroizing::new(serde_json::to_string(&info)?))));
        }
        Call::Step(Step::Create, input) => {
            rotator.call_create(&mut *store, &input).await?.map(|v| Some(Zeroizing::new(v)))
        }
        Call::Step(Step::Set, input) => rotator.call_set(&mut *store, &input).await?.map(|()| None),
        Call::Step(Step::Test, input) => rotator.call_test(&mut *store, &input).await?.map(|()| None),
        Call::Step(Step::Finish, input) => rotator.call_finish(&mut *store, &input).await?.map(|()| None),
        Call::CheckRole { .. } | Call::Issue(_) | Call::Renew { .. } | Call::Revoke { .. } => {
            unreachable!("dispatched above")
        }
    };
    Ok(step_result.map_err(step_error))
}

/// The `dynamic` interface's calls.
async fn invoke_dynamic(
    plugin: &LoadedPlugin,
    store: &mut Store<PluginState>,
    call: Call,
) -> wasmtime::Result<Result<Option<Zeroizing<String>>, PluginError>> {
    let Some(pre) = &plugin.dynamic_pre else {
        return Ok(Err(PluginError::new(
            PluginErrorKind::Invalid,
            "this plugin does not implement dynamic secrets (it does not export tumbler:rotator/dynamic)",
        )));
    };
    let instance = pre.instantiate_async(&mut *store).await?;
    let dynamic = instance.tumbler_rotator_dynamic();
    let result = match call {
        Call::CheckRole { role, params } => dynamic.call_check_role(&mut *store, &role, &params).await?.map(|()| None),
        Call::Issue(request) => dynamic.call_issue(&mut *store, &request).await?.map(|issued| {
            let json = serde_json::json!({"credential": issued.credential, "revoke_handle": issued.revoke_handle});
            Some(Zeroizing::new(json.to_string()))
        }),
        Call::Renew { role, params, handle, expires_at } => {
            dynamic.call_renew(&mut *store, &role, &params, &handle, &expires_at).await?.map(|()| None)
        }
        Call::Revoke { role, params, handle } => {
            dynamic.call_revoke(&mut *store, &role, &params, &handle).await?.map(|()| None)
        }
        Call::Info | Call::Step(..) => unreachable!("not a dynamic call"),
    };
    Ok(result.map_err(step_error))
}

fn step_error(e: wit::StepError) -> PluginError {
    match e {
        wit::StepError::Retryable(m) => PluginError::new(PluginErrorKind::Retryable, m),
        wit::StepError::Fatal(m) => PluginError::new(PluginErrorKind::Fatal, m),
    }
}

fn trap_error(e: &wasmtime::Error) -> PluginError {
    let trap = e.downcast_ref::<wasmtime::Trap>().copied();
    let message = match trap {
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "the plugin trapped: unreachable code reached (a Rust panic ends this way)".to_owned()
        }
        Some(t) => format!("the plugin trapped: {t}"),
        None => format!("the plugin failed: {e:#}"),
    };
    PluginError::new(PluginErrorKind::Trap, message)
}

/// wasmtime has its own error type; keep its whole chain in the message.
pub fn wasmtime_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn host(message: impl Into<String>) -> PluginError {
    PluginError::new(PluginErrorKind::Host, message)
}

fn empty_info() -> PluginInfo {
    PluginInfo {
        name: String::new(),
        version: String::new(),
        description: String::new(),
        params_schema: None,
        capabilities: Vec::new(),
        dynamic: false,
    }
}

/// Tells a core module and random bytes from a component, so an upload
/// gets an error that says which.
pub fn check_is_component(bytes: &[u8]) -> Result<(), PluginError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok(());
    }
    let message = if wasmparser::Parser::is_core_wasm(bytes) {
        "this is a core WebAssembly module, not a component; build the plugin for wasm32-wasip2 \
         (or wrap it with `wasm-tools component new`)"
    } else {
        "this is not a WebAssembly binary (it does not start with the \\0asm magic)"
    };
    Err(PluginError::new(PluginErrorKind::Invalid, message))
}

impl super::bindings::tumbler::rotator::types::Host for PluginState {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_limit_counts_every_memory_together() {
        let mut limiter = MemoryLimiter::new(64 * MIB);
        // Two memories made at 30 MiB each, then one grows by 4 MiB: 64 MiB.
        assert!(limiter.memory_growing(0, 30 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 30 * MIB, None).unwrap());
        assert!(limiter.memory_growing(30 * MIB, 34 * MIB, None).unwrap());
        assert!(!limiter.exceeded);
        // One more page in either is past the limit, though each is far below it.
        let refused = limiter.memory_growing(30 * MIB, 30 * MIB + 65536, None).unwrap_err();
        assert!(refused.to_string().contains("memory limit"), "{refused}");
        assert!(limiter.exceeded);
        assert_eq!(limiter.used, 64 * MIB, "a refused growth is not counted");
    }

    /// A component of `n` core instances of a module defining one memory of
    /// `mib` MiB, instantiated the way a plugin call is (the pool, the
    /// limiter), but without the world: only the memories are made.
    async fn instantiate(n: usize, mib: usize) -> std::result::Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("cache"), zeroize::Zeroizing::new([7; 32])).unwrap();
        let limits = RuntimeLimits::default();
        assert_eq!(limits.memory_bytes, 64 * MIB, "the cases below are sized for the default limit");
        let runtime = Runtime::new(limits, cache).unwrap();
        let pages = mib * MIB / 65536;
        let text =
            format!("(component (core module $m (memory {pages})){})", " (core instance (instantiate $m))".repeat(n));
        let component = Component::new(&runtime.engine, wat::parse_str(text).unwrap()).map_err(|e| format!("{e:#}"))?;
        let mut store = Store::new(&runtime.engine, MemoryLimiter::new(runtime.limits.memory_bytes));
        store.limiter(|l| l);
        let linker = Linker::<MemoryLimiter>::new(&runtime.engine);
        let made = linker.instantiate_async(&mut store, &component).await.map(|_| ()).map_err(|e| format!("{e:#}"));
        assert_eq!(store.data().exceeded, made.is_err(), "{made:?}");
        made
    }

    #[tokio::test]
    async fn the_epoch_advances_while_a_call_runs_and_never_while_none_does() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("cache"), zeroize::Zeroizing::new([7; 32])).unwrap();
        let runtime = Runtime::new(RuntimeLimits::default(), cache).unwrap();
        let ticks = || runtime.ticker.counts.ticks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ticks(), 0, "no call has run: the ticker sleeps");

        // Waits (up to 10 s, for a loaded machine) for the epoch to pass `n`.
        let passes = |n: u64| async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while ticks() <= n {
                assert!(std::time::Instant::now() < deadline, "the epoch stayed at {n} while a call ran");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let call = runtime.ticker.call();
        let second = runtime.ticker.call();
        passes(2).await;
        drop(call);
        let during = ticks();
        passes(during).await; // the second call still runs

        drop(second);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = ticks();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ticks(), after, "no call runs: the ticker sleeps again");
        // And wakes for the next call.
        let _next = runtime.ticker.call();
        passes(after).await;
    }

    #[tokio::test]
    async fn a_plugins_memories_together_are_held_to_the_memory_limit() {
        instantiate(1, 40).await.expect("one 40 MiB memory fits in 64 MiB");
        instantiate(4, 16).await.expect("four 16 MiB memories fit in 64 MiB");
        let refused = instantiate(2, 40).await.expect_err("two 40 MiB memories are 80 MiB");
        assert!(refused.contains("memory limit of 67108864 bytes exceeded"), "{refused}");
        assert!(instantiate(4, 17).await.is_err(), "four 17 MiB memories are 68 MiB");
    }
}
