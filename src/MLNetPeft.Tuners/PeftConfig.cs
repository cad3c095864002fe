using System.Text.Json.Nodes;

namespace MLNetPeft.Tuners;

/// <summary>
/// Settings of one PEFT method, with HF PEFT's field names (written to and read from <c>adapter_config.json</c>).
/// </summary>
public abstract class PeftConfig
{
    /// <summary>PEFT's <c>peft_type</c> (e.g. "LORA", "IA3").</summary>
    public abstract string PeftType { get; }

    /// <summary>Throws, naming the option, when a setting is out of range.</summary>
    public abstract void Validate();

    /// <summary>The method's fields for <c>adapter_config.json</c> (peft_type, task_type and the targets are added by the caller).</summary>
    internal abstract JsonObject ToJson();
}
