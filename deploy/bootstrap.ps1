# papycluster bootstrap for a Windows host: start or stop this host's agent by hand,
# from a bundle made on the controller, when `papycluster up` cannot reach the host
# (or you prefer to start agents yourself). Windows PowerShell 5.1 or PowerShell 7.
#
#   On the controller:  python -c "from papycluster.cluster.bundle import build_bundle; print(build_bundle()[0])"
#   Copy the zip and this script to the host, then there:
#     Get-Content secret.txt | .\bootstrap.ps1 -Bundle bundle.zip -Name win1 [-Cluster lab] `
#         [-Port 18871] [-Python python] [-Workers 2] [-Advertise ADDR] `
#         [-Shares '{"data": "\\\\filer\\data"}'] [-AgentProfile native|windows]
#     .\bootstrap.ps1 -Bundle bundle.zip -Stop [-Cluster lab]
#
# The cluster secret is read from the pipeline/stdin (one line) and reaches Python
# through a pipe; it never appears on a command line or in an environment variable.
# The bundle is unpacked once into %LOCALAPPDATA%\papycluster\manual-<sha256>.
# The agent runs detached (DETACHED_PROCESS), so it outlives the SSH session.
# Output: one line "PAPYCLUSTER-RESULT {json}".
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)][string]$Bundle,
    [string]$Name = "",
    [string]$Cluster = "papycluster",
    [int]$Port = 18871,
    [string]$Python = "python",
    [int]$Workers = 2,
    [string]$Advertise = "",
    [string]$Shares = "{}",
    [ValidateSet("native", "windows")][string]$AgentProfile = "native",
    [switch]$Stop,
    [Parameter(ValueFromPipeline = $true)][string]$SecretLine
)
begin { $ErrorActionPreference = "Stop"; $lines = @() }
process { if ($SecretLine) { $lines += $SecretLine } }
end {
    function Fail([string]$Message) { [Console]::Error.WriteLine("bootstrap: $Message"); exit 2 }

    if (-not (Test-Path -LiteralPath $Bundle -PathType Leaf)) { Fail "no bundle at $Bundle" }
    $py = Get-Command $Python -ErrorAction SilentlyContinue
    if (-not $py) { Fail "no Python: '$Python' is not on PATH (use -Python C:\path\python.exe)" }
    & $py.Source -c "import sys; sys.exit(sys.version_info < (3, 9))"
    if ($LASTEXITCODE -ne 0) { Fail "Python too old: $(& $py.Source --version 2>&1); papycluster needs >= 3.9" }
    if ("$Name$Cluster" -notmatch '^[A-Za-z0-9_.-]*$') { Fail "names may use letters, digits, _ . - only" }

    $hash = (Get-FileHash -LiteralPath $Bundle -Algorithm SHA256).Hash.ToLower().Substring(0, 16)
    $base = if ($env:LOCALAPPDATA) { $env:LOCALAPPDATA } else { Join-Path $HOME "AppData\Local" }
    $cache = Join-Path $base "papycluster\manual-$hash"
    if (-not (Test-Path -LiteralPath (Join-Path $cache "papycluster\__init__.py"))) {
        $tmp = "$cache.tmp-$PID"
        New-Item -ItemType Directory -Force -Path $tmp | Out-Null
        Expand-Archive -LiteralPath $Bundle -DestinationPath $tmp -Force
        try { Move-Item -LiteralPath $tmp -Destination $cache } catch { Remove-Item -Recurse -Force $tmp }
    }

    # no double quotes inside: Windows PowerShell 5.1 mangles them in native arguments
    $runner = 'import json, sys; from papycluster.cluster.remote import render; ' +
              'config = json.loads(sys.stdin.readline()); ' +
              'exec(compile(render(sys.argv[1], config), sys.argv[1], ''exec''), {''__name__'': ''__main__''})'
    $env:PYTHONPATH = $cache   # a path, not a secret
    if ($Stop) {
        $config = @{ cluster = $Cluster; scan = $true; grace = 5.0 } | ConvertTo-Json -Compress
        $config | & $py.Source -c $runner stop
        exit $LASTEXITCODE
    }
    if (-not $Name) { Fail "-Name is required" }
    $secret = if ($lines.Count -gt 0) { $lines[0] } else { [Console]::In.ReadLine() }
    if (-not $secret) { Fail "no secret on stdin (pipe the cluster secret into this script)" }
    $config = @{
        name = $Name; cluster = $Cluster; secret = $secret.Trim(); port = $Port
        workers = $Workers; advertise = $Advertise; profile = $AgentProfile
        shares = (ConvertFrom-Json $Shares); pythonpath = @($cache); timeout = 30
    } | ConvertTo-Json -Compress -Depth 4
    $config | & $py.Source -c $runner launch
    exit $LASTEXITCODE
}
