//! Password rules and hashing. Hashing is argon2id with the OWASP parameters (m = 19 MiB, t = 2,
//! p = 1), always on tokio's blocking pool behind a semaphore: at most `workers` hashes run at
//! once and at most `max_waiting` calls queue for a slot; beyond that the call is refused with
//! RESOURCE_EXHAUSTED, so a login storm costs bounded memory and never stalls the async runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use steward_runtime::{ApiError, ApiResult};
use tokio::sync::Semaphore;

/// Shortest password accepted, in Unicode code points.
pub const MIN_LENGTH: usize = 12;
/// Longest password accepted, in Unicode code points.
pub const MAX_LENGTH: usize = 128;
/// Lowest zxcvbn score accepted (of 4).
pub const MIN_SCORE: u8 = 3;

/// Checks the password rules: length in code points, then strength by zxcvbn with the
/// administrator's email (and its parts) and organization name as known user inputs. The error
/// is INVALID_ARGUMENT naming `field`, with the estimator's feedback.
pub fn validate(field: &str, password: &str, user_inputs: &[&str]) -> ApiResult<()> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(ApiError::invalid(
            field,
            format!("must be at least {MIN_LENGTH} characters long"),
        ));
    }
    if length > MAX_LENGTH {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_LENGTH} characters long"),
        ));
    }
    let mut inputs: Vec<&str> = Vec::new();
    for input in user_inputs.iter().filter(|i| !i.is_empty()) {
        inputs.push(input);
        if let Some((local, domain)) = input.split_once('@') {
            inputs.push(local);
            inputs.extend(domain.split('.').filter(|p| p.len() >= 3));
        }
    }
    let entropy = zxcvbn::zxcvbn(password, &inputs);
    if u8::from(entropy.score()) >= MIN_SCORE {
        return Ok(());
    }
    let mut why = String::from("is too easy to guess");
    if let Some(feedback) = entropy.feedback() {
        if let Some(warning) = feedback.warning() {
            why.push_str(&format!(": {warning}"));
        }
        let suggestions: Vec<String> =
            feedback.suggestions().iter().map(|s| s.to_string()).collect();
        if !suggestions.is_empty() {
            why.push_str(&format!(" ({})", suggestions.join(" ")));
        }
    }
    Err(ApiError::invalid(field, why))
}

fn argon2() -> ApiResult<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| ApiError::internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_blocking(password: &str) -> ApiResult<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| ApiError::internal(format!("salt: {e}")))?;
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| ApiError::internal(format!("argon2 hash failed: {e}")))
}

fn verify_blocking(password: &str, phc: &str) -> ApiResult<bool> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| ApiError::internal(format!("stored hash unreadable: {e}")))?;
    match argon2()?.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(ApiError::internal(format!("argon2 verify failed: {e}"))),
    }
}

/// A job for a hashing thread.
type Job = Box<dyn FnOnce() + Send>;

/// The niceness of the hashing threads (Linux). Hashing is the only CPU-bound work of the
/// process: at the default priority a burst of sign-ins took its share of the cores from every
/// other call (CheckAccess p99 went up 5x while sign-in was saturated; 2.4x at 15). At 15, a
/// hashing thread weighs about a thirtieth of a normal one when both want a core, and hashes at
/// full speed when nothing else does.
const HASHING_NICENESS: i32 = 15;

/// A fixed set of threads that run the hashes. Each hash needs 19 MiB; the allocator keeps
/// freed memory per thread, so hashing on whichever blocking thread is free made the process
/// keep 19 MiB for every thread that ever hashed. A few long-lived threads reuse theirs. They
/// run at a lower priority ([`HASHING_NICENESS`]).
struct Threads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Threads {
    fn start(count: usize) -> ApiResult<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..count.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // Ends when every sender is gone (the hasher was dropped).
                        let next = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = next else { return };
                        // A panicking job fails its own call only (its answer channel is
                        // dropped).
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| ApiError::internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(work());
            }))
            .map_err(|_| ApiError::internal("the hashing threads stopped"))?;
        answered.await.map_err(|_| ApiError::internal("hashing task failed"))
    }
}

/// Lowers the calling thread's priority to [`HASHING_NICENESS`] (on Linux `setpriority`
/// applies to the calling thread only). Failing is harmless: the thread hashes at the default
/// priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::process::setpriority_process(None, HASHING_NICENESS) {
        tracing::debug!(error = %err, "cannot lower the priority of a hashing thread");
    }
}

/// The bounded hashing pool.
#[derive(Clone)]
pub struct Hasher {
    threads: Arc<Threads>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    dummy: Arc<String>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("max_waiting", &self.max_waiting).finish_non_exhaustive()
    }
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hasher {
    /// A pool running `workers` hashes at once, on as many threads of its own, with at most
    /// `max_waiting` queued calls. Computes
    /// the dummy hash verified for unknown emails (so their sign-in costs the same).
    pub async fn new(workers: usize, max_waiting: usize) -> ApiResult<Self> {
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let dummy_password =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random);
        let dummy = tokio::task::spawn_blocking(move || hash_blocking(&dummy_password))
            .await
            .map_err(|e| ApiError::internal(format!("hashing task failed: {e}")))??;
        Ok(Self {
            threads: Arc::new(Threads::start(workers)?),
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
            dummy: Arc::new(dummy),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(max_waiting = self.max_waiting, "password hashing queue full");
            return Err(ApiError::ResourceExhausted { retry_after: Duration::from_secs(1) });
        }
        let guard = Waiting(&self.waiting);
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("hashing pool closed"))?;
        drop(guard);
        self.threads
            .run(move || {
                let _permit = permit;
                work()
            })
            .await?
    }

    /// The argon2id PHC string of `password`.
    pub async fn hash(&self, password: &str) -> ApiResult<String> {
        let password = password.to_string();
        self.run(move || hash_blocking(&password)).await
    }

    /// Whether `password` matches `phc`; with `None`, verifies against the dummy hash (always
    /// false) so that an unknown account costs the same as a known one.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> ApiResult<bool> {
        let password = password.to_string();
        let known = phc.is_some();
        let phc = phc.map(str::to_string).unwrap_or_else(|| self.dummy.as_str().to_string());
        let matched = self.run(move || verify_blocking(&password, &phc)).await?;
        Ok(matched && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(err: ApiError) -> (String, String) {
        match err {
            ApiError::InvalidArgument(v) => (v[0].field.clone(), v[0].description.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn length_is_counted_in_code_points() {
        let (field, why) = violation(validate("password", "short", &[]).unwrap_err());
        assert_eq!(field, "password");
        assert!(why.contains("at least 12"), "{why}");
        // 12 two-byte characters: 24 bytes but 12 code points, so the length rule passes.
        assert!(validate("p", "éàüöçñøåæßðþ", &[])
            .map_err(violation)
            .err()
            .is_none_or(|(_, w)| !w.contains("at least")));
        let long = "x".repeat(129);
        assert!(violation(validate("p", &long, &[]).unwrap_err()).1.contains("at most 128"));
    }

    #[test]
    fn weak_and_personal_passwords_are_refused() {
        let (_, why) = violation(validate("new_password", "password1234", &[]).unwrap_err());
        assert!(why.contains("too easy"), "{why}");
        let email = "margaret.hamilton@example.com";
        assert!(validate("password", "margarethamilton", &[email]).is_err());
        assert!(validate("password", "correct horse battery staple 93!", &[email]).is_ok());
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() {
        let hasher = Hasher::new(1, 4).await.unwrap();
        let phc = hasher.hash("a long enough password").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(hasher.verify("a long enough password", Some(&phc)).await.unwrap());
        assert!(!hasher.verify("another password!", Some(&phc)).await.unwrap());
        assert!(!hasher.verify("a long enough password", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_queue_is_refused() {
        let hasher = Hasher::new(1, 0).await.unwrap();
        let err = hasher.hash("whatever password").await.unwrap_err();
        assert!(matches!(err, ApiError::ResourceExhausted { .. }));
    }
}
