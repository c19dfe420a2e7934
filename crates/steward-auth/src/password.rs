//! Password rules and hashing. Hashing is argon2id with the OWASP parameters (m = 19 MiB, t = 2,
//! p = 1), on a few threads of its own, each hashing in the same 19 MiB it allocated once: at
//! most `workers` hashes run at once and at most `max_waiting` calls queue for a slot; beyond
//! that the call is refused with RESOURCE_EXHAUSTED, so a login storm costs bounded memory and
//! never stalls the async runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

/// `memory` resized to the `count` blocks a hash needs (kept from one hash to the next).
fn blocks(memory: &mut Vec<Block>, count: usize) -> &mut [Block] {
    if memory.len() != count {
        *memory = vec![Block::default(); count];
    }
    memory.as_mut_slice()
}

/// The argon2id PHC string of `password` under a new random salt, hashed in `memory`.
fn hash_blocking(password: &str, memory: &mut Vec<Block>) -> ApiResult<String> {
    let failed = |e: &dyn std::fmt::Display| ApiError::internal(format!("argon2 hash failed: {e}"));
    let hasher = argon2()?;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; 32];
    let count = hasher.params().block_count();
    hasher
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks(memory, count))
        .map_err(|e| failed(&e))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: hasher.params().try_into().map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the argon2id PHC string `phc` (with the parameters stored in
/// it), hashed in `memory`; the outputs are compared in constant time.
fn verify_blocking(password: &str, phc: &str, memory: &mut Vec<Block>) -> ApiResult<bool> {
    let unreadable =
        |e: &dyn std::fmt::Display| ApiError::internal(format!("stored hash unreadable: {e}"));
    let parsed = PasswordHash::new(phc).map_err(|e| unreadable(&e))?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(unreadable(&format!("algorithm {} is not argon2id", parsed.algorithm)));
    }
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| unreadable(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| unreadable(&e))?;
    let expected = parsed.hash.ok_or_else(|| unreadable(&"no hash"))?;
    let salt = parsed.salt.ok_or_else(|| unreadable(&"no salt"))?;
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes).map_err(|e| unreadable(&e))?;
    let hasher = Argon2::new(Algorithm::Argon2id, version, params);
    let mut out = vec![0u8; expected.len()];
    let count = hasher.params().block_count();
    hasher
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks(memory, count))
        .map_err(|e| ApiError::internal(format!("argon2 verify failed: {e}")))?;
    let computed = Output::new(&out).map_err(|e| unreadable(&e))?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

/// A job for a hashing thread, given the thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The niceness of the hashing threads (Linux). Hashing is the only CPU-bound work of the
/// process: at the default priority a burst of sign-ins took its share of the cores from every
/// other call (CheckAccess p99 went up 5x while sign-in was saturated; 2.4x at 15). At 15, a
/// hashing thread weighs about a thirtieth of a normal one when both want a core, and hashes at
/// full speed when nothing else does.
const HASHING_NICENESS: i32 = 15;

/// A fixed set of threads that run the hashes. Each hash needs 19 MiB. Allocated per hash,
/// glibc kept several such blocks per thread once its mmap threshold had risen past their size
/// (+80 MiB of RSS under a sign-in burst); each thread now allocates its memory once and hashes
/// in it every time. They run at a lower priority ([`HASHING_NICENESS`]).
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
                    let mut memory = Vec::new();
                    loop {
                        // Ends when every sender is gone (the hasher was dropped).
                        let next = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = next else { return };
                        // A panicking job fails its own call only (its answer channel is
                        // dropped).
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job(&mut memory);
                        }));
                    }
                })
                .map_err(|e| ApiError::internal(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> ApiResult<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |memory: &mut Vec<Block>| {
                let _ = answer.send(work(memory));
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
        // On a thread of its own, whose memory is returned: a hashing thread would keep its
        // 19 MiB from the start, before any sign-in.
        let dummy =
            tokio::task::spawn_blocking(move || hash_blocking(&dummy_password, &mut Vec::new()))
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
        work: impl FnOnce(&mut Vec<Block>) -> ApiResult<T> + Send + 'static,
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
            .run(move |memory| {
                let _permit = permit;
                work(memory)
            })
            .await?
    }

    /// The argon2id PHC string of `password`.
    pub async fn hash(&self, password: &str) -> ApiResult<String> {
        let password = password.to_string();
        self.run(move |memory| hash_blocking(&password, memory)).await
    }

    /// Whether `password` matches `phc`; with `None`, verifies against the dummy hash (always
    /// false) so that an unknown account costs the same as a known one.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> ApiResult<bool> {
        let password = password.to_string();
        let known = phc.is_some();
        let phc = phc.map(str::to_string).unwrap_or_else(|| self.dummy.as_str().to_string());
        let matched = self.run(move |memory| verify_blocking(&password, &phc, memory)).await?;
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
    fn hashes_are_standard_phc_strings_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut memory = Vec::new();
        // Ours, read by the argon2 crate's own verifier (as every stored hash was before).
        let ours = hash_blocking("correct horse battery", &mut memory).unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2().unwrap().verify_password(b"correct horse battery", &parsed).is_ok());
        assert!(argon2().unwrap().verify_password(b"correct horse batter", &parsed).is_err());
        // A hash stored by the crate's own hasher (other parameters too), read by ours, in the
        // memory the last hash left.
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let params = Params::new(8 * 1024, 1, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert!(verify_blocking("correct horse battery", &theirs, &mut memory).unwrap());
        assert!(!verify_blocking("correct horse batterY", &theirs, &mut memory).unwrap());
        assert!(verify_blocking("correct horse battery", &ours, &mut memory).unwrap());
        assert!(!verify_blocking("", &ours, &mut memory).unwrap());
        // Not argon2id, or not a hash at all: an error, never a match.
        let argon2i = theirs.replacen("$argon2id$", "$argon2i$", 1);
        assert!(verify_blocking("correct horse battery", &argon2i, &mut memory).is_err());
        assert!(verify_blocking("x", "not a hash", &mut memory).is_err());
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
