//! `steward commands ...` and `steward runs ...`.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;

use futures::FutureExt;

use serde_json::{json, Value};
use steward_proto::commands::v1::{
    watch_run_response, CancelRunRequest, Command, CreateCommandRequest, CreateGrantRequest,
    DeleteCommandRequest, DeleteGrantRequest, GetCommandRequest, GetGrantRequest, GetRunRequest,
    Grant, Interpreter, ListCommandsRequest, ListGrantsRequest, ListRunsRequest, OutputStream, Run,
    RunCommandRequest, RunState, UpdateCommandRequest, WatchRunRequest,
};
use tonic::Code;

use super::{admins, request_id};
use crate::cli::{CommandsCommand, Format, InterpreterArg, RunsCommand};
use crate::context::Context;
use crate::error::{CliError, Result};
use crate::output::{Column, Show};
use crate::{convert, input, names, output};

const COMMAND_COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("DISPLAY_NAME", "display_name", Show::Text),
    Column::new("INTERPRETER", "interpreter", Show::Enum("INTERPRETER_")),
    Column::new("TIMEOUT", "timeout", Show::Text),
    Column::new("TARGET_SYSTEMS", "target_systems", Show::Ref),
];
const GRANT_COLUMNS: &[Column] = &[
    Column::new("ID", "name", Show::ChildId),
    Column::new("GRANTEE", "grantee", Show::Ref),
    Column::new("CREATED", "create_time", Show::Time),
];
const RUN_COLUMNS: &[Column] = &[
    Column::id(),
    Column::new("COMMAND", "command_display_name", Show::Text),
    Column::new("RUNNER", "runner", Show::Ref),
    Column::new("STATE", "state", Show::Enum("RUN_STATE_")),
    Column::new("CREATED", "create_time", Show::Time),
];

fn interpreter(arg: InterpreterArg) -> Interpreter {
    match arg {
        InterpreterArg::Sh => Interpreter::Sh,
        InterpreterArg::Bash => Interpreter::Bash,
        InterpreterArg::Powershell => Interpreter::Powershell,
        InterpreterArg::Python3 => Interpreter::Python3,
    }
}

fn read_script(source: &str) -> Result<String> {
    if source == "-" {
        let mut script = String::new();
        std::io::stdin().read_to_string(&mut script).map_err(|source| CliError::Stdio {
            context: "cannot read the script from stdin",
            source,
        })?;
        return Ok(script);
    }
    std::fs::read_to_string(source).map_err(|err| CliError::Io {
        context: "cannot read the script",
        path: source.into(),
        source: err,
    })
}

async fn get_command(ctx: &mut Context, name: String) -> Result<Command> {
    ctx.call(move |s| {
        let name = name.clone();
        async move { s.commands().get_command(GetCommandRequest { name }).await }
    })
    .await?
    .command
    .ok_or(CliError::Protocol("GetCommand without a command"))
}

/// Runs a `commands` subcommand.
pub async fn commands(ctx: &mut Context, cmd: CommandsCommand) -> Result<u8> {
    let org = ctx.organization()?;
    match cmd {
        CommandsCommand::List { filter, order_by } => {
            let items = ctx
                .all_pages(
                    |page_token| ListCommandsRequest {
                        parent: org.clone(),
                        page_size: 1000,
                        page_token,
                        filter: filter.clone().unwrap_or_default(),
                        order_by: order_by.clone().unwrap_or_default(),
                    },
                    |s, request| async move { s.commands().list_commands(request).await },
                    |page| {
                        (page.commands.iter().map(convert::command).collect(), page.next_page_token)
                    },
                )
                .await?;
            output::list(ctx.format, &items, COMMAND_COLUMNS)?;
        }
        CommandsCommand::Get { command } => {
            let command = get_command(ctx, names::expand(&org, "commands", &command)).await?;
            output::object(ctx.format, &convert::command(&command))?;
        }
        CommandsCommand::Create {
            name,
            script,
            interpreter: interp,
            description,
            run_as,
            timeout,
            systems,
        } => {
            let timeout = input::duration(&timeout)?;
            let script = read_script(&script)?;
            let request = CreateCommandRequest {
                parent: org.clone(),
                command: Some(Command {
                    display_name: name,
                    description: description.unwrap_or_default(),
                    script,
                    interpreter: interpreter(interp) as i32,
                    run_as_user: run_as.unwrap_or_default(),
                    timeout: Some(timeout),
                    target_systems: systems
                        .iter()
                        .map(|s| names::expand(&org, "systems", s))
                        .collect(),
                    ..Default::default()
                }),
                request_id: request_id(),
                command_id: String::new(),
            };
            let created = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.commands().create_command(request).await }
                })
                .await?
                .command
                .ok_or(CliError::Protocol("CreateCommand without a command"))?;
            output::object(ctx.format, &convert::command(&created))?;
        }
        CommandsCommand::Update {
            command,
            name: display_name,
            script,
            interpreter: interp,
            description,
            run_as,
            timeout,
            systems,
            no_systems,
            etag,
        } => {
            let name = names::expand(&org, "commands", &command);
            let etag = match etag {
                Some(etag) => etag,
                None => get_command(ctx, name.clone()).await?.etag,
            };
            let mut changes = Command { name, etag, ..Default::default() };
            let mut paths = Vec::new();
            if let Some(display_name) = display_name {
                changes.display_name = display_name;
                paths.push("display_name");
            }
            if let Some(script) = script {
                changes.script = read_script(&script)?;
                paths.push("script");
            }
            if let Some(interp) = interp {
                changes.interpreter = interpreter(interp) as i32;
                paths.push("interpreter");
            }
            if let Some(description) = description {
                changes.description = description;
                paths.push("description");
            }
            if let Some(run_as) = run_as {
                changes.run_as_user = run_as;
                paths.push("run_as_user");
            }
            if let Some(timeout) = timeout {
                changes.timeout = Some(input::duration(&timeout)?);
                paths.push("timeout");
            }
            if no_systems || !systems.is_empty() {
                changes.target_systems =
                    systems.iter().map(|s| names::expand(&org, "systems", s)).collect();
                paths.push("target_systems");
            }
            let request = UpdateCommandRequest {
                command: Some(changes),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.into_iter().map(String::from).collect(),
                }),
            };
            let updated = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.commands().update_command(request).await }
                })
                .await?
                .command
                .ok_or(CliError::Protocol("UpdateCommand without a command"))?;
            output::object(ctx.format, &convert::command(&updated))?;
        }
        CommandsCommand::Delete { command } => {
            let name = names::expand(&org, "commands", &command);
            let request = DeleteCommandRequest { name: name.clone(), etag: String::new() };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.commands().delete_command(request).await }
            })
            .await?;
            done(ctx.format, "deleted", &name)?;
        }
        CommandsCommand::Grant { command, to } => {
            let parent = names::expand(&org, "commands", &command);
            let grantee = admins::resolve(ctx, &to).await?;
            let request = CreateGrantRequest {
                parent,
                grant: Some(Grant { grantee, ..Default::default() }),
                request_id: request_id(),
            };
            let grant = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.commands().create_grant(request).await }
                })
                .await?
                .grant
                .ok_or(CliError::Protocol("CreateGrant without a grant"))?;
            output::object(ctx.format, &convert::grant(&grant))?;
        }
        CommandsCommand::Revoke { grant } => {
            let name = names::expand(&org, "commands", &grant);
            let request = DeleteGrantRequest { name: name.clone() };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.commands().delete_grant(request).await }
            })
            .await?;
            done(ctx.format, "revoked", &name)?;
        }
        CommandsCommand::ShowGrant { grant } => {
            let request = GetGrantRequest { name: names::expand(&org, "commands", &grant) };
            let grant = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.commands().get_grant(request).await }
                })
                .await?
                .grant
                .ok_or(CliError::Protocol("GetGrant without a grant"))?;
            output::object(ctx.format, &convert::grant(&grant))?;
        }
        CommandsCommand::Grants { command } => {
            let parent = names::expand(&org, "commands", command.as_deref().unwrap_or("-"));
            let items = ctx
                .all_pages(
                    |page_token| ListGrantsRequest {
                        parent: parent.clone(),
                        page_size: 1000,
                        page_token,
                        filter: String::new(),
                    },
                    |s, request| async move { s.commands().list_grants(request).await },
                    |page| (page.grants.iter().map(convert::grant).collect(), page.next_page_token),
                )
                .await?;
            output::list(ctx.format, &items, GRANT_COLUMNS)?;
        }
        CommandsCommand::Run { command, systems, wait, exit_code } => {
            // Listening before the run exists: a Ctrl-C while it is created then stops
            // following it at once, after its name is printed.
            let interrupted = wait.then(ctrl_c);
            let request = RunCommandRequest {
                command: names::expand(&org, "commands", &command),
                systems: systems.iter().map(|s| names::expand(&org, "systems", s)).collect(),
                request_id: request_id(),
            };
            let run = ctx
                .call(move |s| {
                    let request = request.clone();
                    async move { s.commands().run_command(request).await }
                })
                .await?
                .run
                .ok_or(CliError::Protocol("RunCommand without a run"))?;
            if let Some(interrupted) = interrupted {
                // The run's name first, before any output, so it is known even if following
                // stops: on stderr in text (stdout is the script's output), as the first event
                // in JSON.
                match ctx.format {
                    Format::Json => output::json_doc(&json!({"run": convert::run(&run)}))?,
                    Format::Text => output::note(&format!("run {}", run.name)),
                }
                return follow(ctx, run.name, exit_code, interrupted).await;
            }
            output::object(ctx.format, &convert::run(&run))?;
            if ctx.format == Format::Text {
                output::note(&format!(
                    "follow it with: {} runs watch {}",
                    ctx.steward(),
                    names::id(&run.name)
                ));
            }
        }
    }
    Ok(0)
}

fn done(format: Format, what: &str, name: &str) -> Result<()> {
    match format {
        Format::Json => output::json_doc(&json!({ what: name })),
        Format::Text => output::line(&format!("{what} {name}")),
    }
}

/// Runs a `runs` subcommand.
pub async fn runs(ctx: &mut Context, cmd: RunsCommand) -> Result<u8> {
    let org = ctx.organization()?;
    match cmd {
        RunsCommand::List { filter } => {
            let items = ctx
                .all_pages(
                    |page_token| ListRunsRequest {
                        parent: org.clone(),
                        page_size: 1000,
                        page_token,
                        filter: filter.clone().unwrap_or_default(),
                    },
                    |s, request| async move { s.commands().list_runs(request).await },
                    |page| (page.runs.iter().map(convert::run).collect(), page.next_page_token),
                )
                .await?;
            let items = match ctx.format {
                Format::Json => items,
                Format::Text => with_command_display_names(ctx, &org, items).await,
            };
            output::list(ctx.format, &items, RUN_COLUMNS)?;
        }
        RunsCommand::Get { run } => {
            let run = get_run_with_output(ctx, names::expand(&org, "runs", &run)).await?;
            print_run(ctx.format, &run)?;
        }
        RunsCommand::Cancel { run } => {
            let name = names::expand(&org, "runs", &run);
            let run = ctx
                .call(move |s| {
                    let name = name.clone();
                    async move { s.commands().cancel_run(CancelRunRequest { name }).await }
                })
                .await?
                .run
                .ok_or(CliError::Protocol("CancelRun without a run"))?;
            print_run(ctx.format, &run)?;
        }
        RunsCommand::Watch { run, exit_code } => {
            return follow(ctx, names::expand(&org, "runs", &run), exit_code, ctrl_c()).await
        }
    }
    Ok(0)
}

/// For the text table: each run with `command_display_name`, the display name of its command
/// when the caller may list it, else the command's ID (a deleted command, or a role that reads
/// runs but not commands).
async fn with_command_display_names(ctx: &mut Context, org: &str, runs: Vec<Value>) -> Vec<Value> {
    let commands = ctx
        .all_pages(
            |page_token| ListCommandsRequest {
                parent: org.to_string(),
                page_size: 1000,
                page_token,
                filter: String::new(),
                order_by: String::new(),
            },
            |s, request| async move { s.commands().list_commands(request).await },
            |page| {
                let names = page.commands.into_iter().map(|c| (c.name, c.display_name)).collect();
                (names, page.next_page_token)
            },
        )
        .await;
    let display_names: HashMap<String, String> = commands.unwrap_or_default().into_iter().collect();
    runs.into_iter()
        .map(|mut run| {
            let command = run.get("command").and_then(Value::as_str).unwrap_or_default();
            let shown = display_names
                .get(command)
                .filter(|d| !d.is_empty())
                .cloned()
                .unwrap_or_else(|| names::id(command).to_string());
            if let Some(map) = run.as_object_mut() {
                map.insert("command_display_name".into(), Value::from(shown));
            }
            run
        })
        .collect()
}

async fn get_run(ctx: &mut Context, name: String) -> Result<Run> {
    get_run_of(ctx, name, String::new()).await
}

/// GetRun, carrying `output_system`'s whole output when it is set.
async fn get_run_of(ctx: &mut Context, name: String, output_system: String) -> Result<Run> {
    ctx.call(move |s| {
        let request = GetRunRequest { name: name.clone(), output_system: output_system.clone() };
        async move { s.commands().get_run(request).await }
    })
    .await?
    .run
    .ok_or(CliError::Protocol("GetRun without a run"))
}

/// A run with every system's output: the systems a GetRun answer left out (it carries at most
/// 2 MiB of output) are asked for one by one.
async fn get_run_with_output(ctx: &mut Context, name: String) -> Result<Run> {
    let mut run = get_run(ctx, name.clone()).await?;
    for i in 0..run.results.len() {
        let Some(system) =
            run.results.get(i).filter(|r| r.output_omitted).map(|r| r.system.clone())
        else {
            continue;
        };
        let one = get_run_of(ctx, name.clone(), system.clone()).await?;
        let found = one.results.into_iter().find(|r| r.system == system);
        if let (Some(slot), Some(found)) = (run.results.get_mut(i), found) {
            *slot = found;
        }
    }
    Ok(run)
}

/// A run as text: its fields, then each system's output under a heading.
fn print_run(format: Format, run: &Run) -> Result<()> {
    let mut value = convert::run(run);
    if format == Format::Json {
        return output::object(format, &value);
    }
    if let Some(results) = value.get_mut("results").and_then(Value::as_array_mut) {
        for result in results.iter_mut().filter_map(Value::as_object_mut) {
            result.remove("stdout");
            result.remove("stderr");
        }
    }
    output::object(format, &value)?;
    for result in &run.results {
        for (stream, bytes) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            if !bytes.is_empty() {
                output::line(&format!("--- {} {stream} ---", result.system))?;
                output::write_stdout(bytes)?;
                if !bytes.ends_with(b"\n") {
                    output::line("")?;
                }
            }
        }
    }
    Ok(())
}

fn finished(state: i32) -> bool {
    [RunState::Succeeded, RunState::Failed, RunState::TimedOut, RunState::Cancelled]
        .iter()
        .any(|s| *s as i32 == state)
}

/// Which part of a chunk is new, given how much of its stream was already printed; output
/// replayed after a reconnect is skipped.
fn unseen(
    printed: &mut HashMap<(String, i32), i64>,
    system: &str,
    stream: i32,
    offset: i64,
    data: &[u8],
) -> usize {
    let end = printed.entry((system.to_string(), stream)).or_insert(0);
    let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
    let skip = (*end - offset).clamp(0, len);
    *end = (*end).max(offset.saturating_add(len));
    usize::try_from(skip).unwrap_or(data.len())
}

/// Streams of a run lost in a row without a single event before following gives up.
const MAX_FRUITLESS_STREAMS: u32 = 5;

/// Whether to reconnect after the stream of an unfinished run was lost: a stream that
/// delivered any event (the server sends the run first) shows that the server and the run are
/// there, so the count starts again. A run lasting hours is followed across every stream the
/// server recycles (its connection age), while a server that breaks streams before sending
/// anything is given up on after [`MAX_FRUITLESS_STREAMS`].
#[derive(Debug, Default)]
struct LostStreams {
    /// Streams lost in a row without an event.
    fruitless: u32,
}

impl LostStreams {
    /// After a stream was lost (`delivered`: it delivered at least one event): whether to open
    /// another.
    fn reconnect_after(&mut self, delivered: bool) -> bool {
        self.fruitless = if delivered { 0 } else { self.fruitless.saturating_add(1) };
        self.fruitless < MAX_FRUITLESS_STREAMS
    }
}

/// Waits [`RECONNECT_PAUSE`] before the next stream.
#[allow(clippy::disallowed_methods)] // wall-clock pause between reconnects on purpose
async fn reconnect_pause() {
    tokio::time::sleep(RECONNECT_PAUSE).await;
}

/// The pause before reopening a lost stream: a server that breaks every stream right after
/// its first event is asked at most once a second, not in a tight loop.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The exit code of a finished run: 0 if it succeeded, else 1; with `pass_exit_code`, the
/// first non-zero exit code of its systems' scripts instead, as the agents reported them (a
/// script killed on timeout or cancel: 128 + the signal), when one fits an exit status (1 to
/// 255). A cancelled or timed-out run whose agents have not yet confirmed the kill is 137
/// (128 + SIGKILL) too, what they will report; anything else without a code is 1 (e.g. an
/// unreachable system).
fn exit_status(run: &Run, pass_exit_code: bool) -> u8 {
    /// 128 + SIGKILL: how the agent ends a script on cancel or timeout.
    const KILLED: u8 = 137;
    if run.state == RunState::Succeeded as i32 {
        return 0;
    }
    if !pass_exit_code {
        return 1;
    }
    let reported = run
        .results
        .iter()
        .map(|r| r.exit_code)
        .find(|code| *code != 0)
        .and_then(|code| u8::try_from(code).ok());
    let killed = [RunState::Cancelled as i32, RunState::TimedOut as i32].contains(&run.state);
    reported.unwrap_or(if killed { KILLED } else { 1 })
}

/// The exit code after Ctrl-C stopped following a run (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// Ctrl-C, as a future.
type CtrlC = Pin<Box<dyn Future<Output = std::io::Result<()>>>>;

/// Listens for Ctrl-C from now on: tokio installs the handler at the first poll, so it is
/// polled once here. If the handler cannot be installed, Ctrl-C keeps its default action (the
/// future never completes).
fn ctrl_c() -> CtrlC {
    let mut ctrl_c: CtrlC = Box::pin(tokio::signal::ctrl_c());
    match (&mut ctrl_c).now_or_never() {
        None => ctrl_c,
        Some(Ok(())) => Box::pin(std::future::ready(Ok(()))),
        Some(Err(_)) => Box::pin(std::future::pending()),
    }
}

/// Follows a run until it ends (see [`watch_to_end`]) and returns its exit code (see
/// [`exit_status`]). Ctrl-C (`interrupted`) stops following, not the run: it says how to
/// re-attach and returns [`INTERRUPTED`].
async fn follow(
    ctx: &mut Context,
    name: String,
    pass_exit_code: bool,
    mut interrupted: CtrlC,
) -> Result<u8> {
    let reattach = format!("{} runs watch {}", ctx.steward(), names::id(&name));
    let cancel = format!("{} runs cancel {}", ctx.steward(), names::id(&name));
    tokio::select! {
        run = watch_to_end(ctx, name.clone()) => Ok(exit_status(&run?, pass_exit_code)),
        // A handler that could not be installed (Err) disables this branch.
        Ok(()) = &mut interrupted => {
            output::note(&format!(
                "\nstopped following {name}; the run goes on.\n  re-attach: {reattach}\n  \
                 cancel it: {cancel}"
            ));
            Ok(INTERRUPTED)
        }
    }
}

/// Follows a run with WatchRun: prints its output as it arrives (text: stdout and stderr
/// chunks to the matching stream; JSON: one event per line), reconnecting if the stream
/// breaks, and returns the finished run (text: with a summary on stderr).
async fn watch_to_end(ctx: &mut Context, name: String) -> Result<Run> {
    let mut printed = HashMap::new();
    let mut last: Option<Run> = None;
    let mut streams = LostStreams::default();
    loop {
        let mut delivered = false;
        let watched = name.clone();
        let mut stream = ctx
            .call(move |s| {
                let name = watched.clone();
                async move { s.commands().watch_run(WatchRunRequest { name }).await }
            })
            .await?;
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(status) if matches!(status.code(), Code::Unavailable | Code::Unknown) => break,
                Err(status) => return Err(status.into()),
            };
            delivered = true;
            match event.event {
                Some(watch_run_response::Event::Run(run)) => {
                    if ctx.format == Format::Json {
                        output::json_doc(&json!({"run": convert::run(&run)}))?;
                    }
                    last = Some(run);
                }
                Some(watch_run_response::Event::Output(chunk)) => {
                    let skip = unseen(
                        &mut printed,
                        &chunk.system,
                        chunk.stream,
                        chunk.offset,
                        &chunk.data,
                    );
                    let data = chunk.data.get(skip..).unwrap_or_default();
                    if data.is_empty() {
                        continue;
                    }
                    match ctx.format {
                        Format::Json => {
                            output::json_doc(&json!({"output": convert::output_chunk(&chunk)}))?
                        }
                        Format::Text if chunk.stream == OutputStream::Stderr as i32 => {
                            output::write_stderr(data)
                        }
                        Format::Text => output::write_stdout(data)?,
                    }
                }
                None => {}
            }
        }
        if last.as_ref().is_some_and(|r| finished(r.state)) {
            break;
        }
        let run = get_run(ctx, name.clone()).await?;
        let done = finished(run.state);
        last = Some(run);
        if done || !streams.reconnect_after(delivered) {
            break;
        }
        reconnect_pause().await;
    }
    let run = last.ok_or(CliError::Protocol("WatchRun without a snapshot of the run"))?;
    if !finished(run.state) {
        return Err(CliError::Input(format!(
            "lost the stream of {} before it ended; see `steward runs get {}`",
            run.name,
            names::id(&run.name)
        )));
    }
    if ctx.format == Format::Text {
        output::note(&format!("run {}: {}", run.name, convert::run_state_name(run.state)));
        for r in &run.results {
            let mut line = format!(
                "  {}: {} (exit {})",
                r.system,
                convert::run_state_name(r.state),
                r.exit_code
            );
            if !r.error_message.is_empty() {
                line.push_str(&format!(": {}", r.error_message));
            }
            output::note(&line);
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_output_is_skipped() {
        let mut printed = HashMap::new();
        assert_eq!(unseen(&mut printed, "s", 1, 0, b"hello "), 0);
        assert_eq!(unseen(&mut printed, "s", 1, 6, b"world"), 0);
        // After a reconnect the stream starts again from the beginning.
        assert_eq!(unseen(&mut printed, "s", 1, 0, b"hello world!"), 11);
        assert_eq!(unseen(&mut printed, "s", 2, 0, b"err"), 0);
        assert_eq!(unseen(&mut printed, "s", 1, 0, b"hel"), 3);
    }

    #[test]
    fn exit_codes_pass_through_only_when_asked() {
        let result = |state: RunState, exit_code| steward_proto::commands::v1::SystemResult {
            state: state as i32,
            exit_code,
            ..Default::default()
        };
        let run =
            |state: RunState, results| Run { state: state as i32, results, ..Default::default() };
        let ok = run(RunState::Succeeded, vec![result(RunState::Succeeded, 0)]);
        assert_eq!((exit_status(&ok, false), exit_status(&ok, true)), (0, 0));
        let failed = run(
            RunState::Failed,
            vec![result(RunState::Succeeded, 0), result(RunState::Failed, 3)],
        );
        assert_eq!((exit_status(&failed, false), exit_status(&failed, true)), (1, 3));
        // No exit code (a system that never ran it) or none that fits a status: 1.
        let unreached = run(RunState::Failed, vec![result(RunState::Failed, 0)]);
        assert_eq!(exit_status(&unreached, true), 1);
        let killed = run(RunState::TimedOut, vec![result(RunState::TimedOut, 137)]);
        assert_eq!((exit_status(&killed, false), exit_status(&killed, true)), (1, 137));
        // Cancelled before the agent confirmed the kill: what it will report.
        let unconfirmed = run(RunState::Cancelled, vec![result(RunState::Running, 0)]);
        assert_eq!(exit_status(&unconfirmed, true), 137);
        for code in [-9, 256, 1000] {
            let odd = run(RunState::Failed, vec![result(RunState::Failed, code)]);
            assert_eq!(exit_status(&odd, true), 1, "{code}");
        }
    }

    #[test]
    fn streams_that_delivered_events_are_followed_without_limit() {
        let mut streams = LostStreams::default();
        // Hours of streams recycled by the server, each after some events: never given up.
        for _ in 0..1000 {
            assert!(streams.reconnect_after(true));
        }
        // Four lost in a row without an event, then one with events: the count starts again.
        for _ in 0..4 {
            assert!(streams.reconnect_after(false));
        }
        assert!(streams.reconnect_after(true));
        for _ in 0..4 {
            assert!(streams.reconnect_after(false));
        }
        // The fifth in a row without an event: given up.
        assert!(!streams.reconnect_after(false));
    }

    #[test]
    fn terminal_states() {
        assert!(finished(RunState::TimedOut as i32));
        assert!(!finished(RunState::Running as i32));
    }
}
