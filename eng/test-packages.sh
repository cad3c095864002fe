#!/usr/bin/env bash
# Packs the library and runs samples/PackageConsumer against the packages (not the projects), from a folder outside
# the repository so that none of its build settings apply:
#   1. as it is: an ML.NET app that also references Microsoft.ML.TorchSharp adds a LoRA fine-tuning stage;
#   2. with its Microsoft.ML.TorchSharp `TextClassification(` call swapped for `PeftTextClassification(` (the only
#      change), run offline;
#   3. the command-line tool, packed as a dotnet tool, installed from the same local feed, trains and evaluates.
# Also checks that the libstdc++ check reaches the app through the packages' buildTransitive target.
# A fresh prerelease version per run, so that NuGet's global cache never serves an older build of the same version.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stamp=$(date +%s)
version="0.1.0-ci.$stamp"
feed=$(mktemp -d)
work=$(mktemp -d)
tools=$(mktemp -d)
cleanup() {
  rm -rf "$feed" "$work" "$tools"
  rm -rf "${NUGET_PACKAGES:-$HOME/.nuget/packages}"/mlnetpeft.*/"$version"
}
trap cleanup EXIT
msg() { echo "test-packages: $*"; }
# A failed step shows its errors, not the whole (long) log.
failed() { grep -E "error [A-Z]+[0-9]+|error:" "$1" | sort -u | head -20; exit 1; }

msg "packing $version"
dotnet pack "$root/MLNetPeft.sln" -c Release -p:VersionSuffix="ci.$stamp" -o "$feed" --nologo -v quiet >"$work/pack.log" 2>&1 || failed "$work/pack.log"
ls -l "$feed"/*.nupkg | awk '{printf "  %10d  %s\n", $5, $NF}' | sed "s|$feed/||"

app="$work/PackageConsumer"
cp -r "$root/samples/PackageConsumer" "$app"
rm -rf "$app/bin" "$app/obj"
sed -i "s|../../artifacts/packages|$feed|" "$app/NuGet.config"

msg "restoring and building the sample from the packages"
dotnet build "$app" -c Release -p:MLNetPeftVersion="$version" -v normal --nologo >"$work/build.log" 2>&1 || failed "$work/build.log"
grep -q "ensure-libstdcxx.sh" "$work/build.log" || { msg "the libstdc++ check did not run in the consuming app"; exit 1; }
[ -f "$app/bin/Release/net10.0/mlnetpeft-base/model.safetensors" ] || { msg "the bundled base model did not reach the app's output"; exit 1; }

msg "running the fine-tuning stage"
dotnet run --project "$app" -c Release --no-build -p:MLNetPeftVersion="$version"

msg "swapping TextClassification( for PeftTextClassification( and running it"
cp "$app/Classify.cs" "$work/Classify.before.cs"
sed -i 's/\.TextClassification(/.PeftTextClassification(/' "$app/Classify.cs"
changed=$(diff "$work/Classify.before.cs" "$app/Classify.cs" | grep -c '^>' || true)
[ "$changed" = 1 ] || { msg "expected one changed line, got $changed"; exit 1; }
dotnet run --project "$app" -c Release -p:MLNetPeftVersion="$version" -- classify

msg "packing the mlnetpeft tool, installing it from the feed, training and evaluating with it"
# Only this machine's platform package (each carries its own libtorch): the others cannot run here, and building
# them costs about 1 GB of disk each.
rid=$(dotnet --info | awk '/^ *RID:/ {print $2; exit}')
dotnet pack "$root/src/MLNetPeft.Cli" -c Release -p:PackCli=true -p:RuntimeIdentifiers="$rid" -p:VersionSuffix="ci.$stamp" -o "$feed" --nologo -v quiet >"$work/tool.log" 2>&1 || failed "$work/tool.log"
ls -l "$feed"/MLNetPeft.Cli.*.nupkg | awk '{printf "  %10d  %s\n", $5, $NF}' | sed "s|$feed/||"
(cd "$work" && dotnet tool install MLNetPeft.Cli --tool-path "$tools" --version "$version" --add-source "$feed" >"$work/install.log" 2>&1) || { cat "$work/install.log"; exit 1; }
printf 'Prompt\tResponse\n' >"$work/rows.tsv"
for i in $(seq 1 16); do printf 'Repeat %s:\t %s\n' "$i" "$i" >>"$work/rows.tsv"; done
"$tools/mlnetpeft" train sft --data "$work/rows.tsv" -o "$work/tool.zip" --steps 8 --batch-size 8 --lr 5e-3 --max-length 32 --max-new-tokens 3
"$tools/mlnetpeft" evaluate -m "$work/tool.zip" --data "$work/rows.tsv"
[ -f "$work/tool.loss.png" ] || { msg "the tool wrote no loss plot"; exit 1; }
msg "ok"
