using System.Text;

namespace MLNetPeft.Tokenization;

/// <summary>One turn of a conversation: role ("system", "user" or "assistant") and text.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>The prompt layouts of common chat and instruction-tuned models.</summary>
public enum ChatFormat
{
    /// <summary>Alpaca's instruction layout ("### Instruction:" / "### Response:"), for base models without a chat format.</summary>
    Alpaca,
    /// <summary>ChatML (<c>&lt;|im_start|&gt;role … &lt;|im_end|&gt;</c>): Qwen2, SmolLM-Instruct.</summary>
    ChatMl,
    /// <summary>Llama 3 headers (<c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;</c>).</summary>
    Llama3,
    /// <summary>Llama 2 / Mistral <c>[INST] … [/INST]</c>.</summary>
    Llama2,
}

/// <summary>
/// Turns conversations or instruction/response pairs into the exact prompt text a model was tuned on.
/// HF stores these as Jinja templates; rather than run Jinja, the layout is recognised from the template's
/// markers (<see cref="Detect"/>) and written by code.
/// </summary>
public sealed class ChatTemplate
{
    public ChatTemplate(ChatFormat format, string bosToken = "", string eosToken = "")
    {
        Format = format;
        BosToken = bosToken;
        EosToken = eosToken;
    }

    public ChatFormat Format { get; }
    public string BosToken { get; }
    public string EosToken { get; }

    /// <summary>Recognises the layout of an HF <c>chat_template</c>; Alpaca when there is none or it is not recognised.</summary>
    public static ChatFormat Detect(string? jinjaTemplate) => jinjaTemplate switch
    {
        null or "" => ChatFormat.Alpaca,
        var t when t.Contains("<|im_start|>", StringComparison.Ordinal) => ChatFormat.ChatMl,
        var t when t.Contains("<|start_header_id|>", StringComparison.Ordinal) => ChatFormat.Llama3,
        var t when t.Contains("[INST]", StringComparison.Ordinal) => ChatFormat.Llama2,
        _ => ChatFormat.Alpaca,
    };

    /// <summary>
    /// The prompt for <paramref name="messages"/>; with <paramref name="addGenerationPrompt"/> it ends where the
    /// assistant's reply begins, ready for generation.
    /// </summary>
    public string Apply(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        foreach (var m in messages)
        {
            if (m.Role is not ("system" or "user" or "assistant"))
                throw new ArgumentException($"Chat role '{m.Role}' is not one of system, user, assistant.", nameof(messages));
        }
        var sb = new StringBuilder();
        switch (Format)
        {
            case ChatFormat.ChatMl:
                foreach (var m in messages) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
                if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
                break;
            case ChatFormat.Llama3:
                sb.Append(BosToken);
                foreach (var m in messages)
                    sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(m.Content.Trim()).Append("<|eot_id|>");
                if (addGenerationPrompt) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
                break;
            case ChatFormat.Llama2:
                string? system = messages.FirstOrDefault(m => m.Role == "system")?.Content;
                bool first = true;
                foreach (var m in messages.Where(m => m.Role != "system"))
                {
                    if (m.Role == "user")
                    {
                        var content = first && system is not null ? $"<<SYS>>\n{system}\n<</SYS>>\n\n{m.Content}" : m.Content;
                        sb.Append(BosToken).Append("[INST] ").Append(content.Trim()).Append(" [/INST]");
                        first = false;
                    }
                    else sb.Append(' ').Append(m.Content.Trim()).Append(' ').Append(EosToken);
                }
                break;
            case ChatFormat.Alpaca:
                var systemText = messages.FirstOrDefault(m => m.Role == "system")?.Content;
                if (systemText is not null) sb.Append(systemText).Append("\n\n");
                foreach (var m in messages.Where(m => m.Role != "system"))
                {
                    if (m.Role == "user") sb.Append("### Instruction:\n").Append(m.Content).Append("\n\n");
                    else sb.Append("### Response:\n").Append(m.Content).Append(EosToken).Append("\n\n");
                }
                if (addGenerationPrompt) sb.Append("### Response:\n");
                break;
        }
        return sb.ToString();
    }

    /// <summary>
    /// The instruction-tuning prompt for one example: the text before the response (the response itself is
    /// what supervised fine-tuning trains on). <paramref name="input"/> is the optional context of Alpaca rows.
    /// </summary>
    public string FormatInstruction(string instruction, string? input = null)
    {
        ArgumentNullException.ThrowIfNull(instruction);
        if (Format == ChatFormat.Alpaca)
        {
            return string.IsNullOrWhiteSpace(input)
                ? $"Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
                : $"Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
        }
        var user = string.IsNullOrWhiteSpace(input) ? instruction : $"{instruction}\n\n{input}";
        return Apply([new ChatMessage("user", user)], addGenerationPrompt: true);
    }
}
