//! Placeholder.
use crate::*;
/// Settings of [`ProcessRunner`].
#[derive(Clone, Debug)]
pub struct ProcessRunnerConfig {}
/// Runs tests as host processes.
#[derive(Clone, Debug, Default)]
pub struct ProcessRunner {}
#[async_trait::async_trait]
impl TestRunner for ProcessRunner {
    fn name(&self) -> &str { "process" }
    async fn execute(&self, _case: &TestCase, _ctx: &ExecutionContext) -> Result<TestResult, RunnerError> { Err(RunnerError::new("x")) }
}
