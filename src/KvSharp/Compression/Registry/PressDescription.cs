namespace KvSharp.Compression.Registry;

/// <summary>What a registered name is.</summary>
public enum PressPartKind
{
    /// <summary>Scores tokens; starts a press in the text form (<c>snapkv</c>, <c>kvzip</c>, ...).</summary>
    Scorer,
    /// <summary>Decides how many tokens each head keeps; follows a scorer (<c>snapkv+pyramid</c>) or wraps it (<c>adakv(snapkv)</c>).</summary>
    Budget,
    /// <summary>Refines which tokens an importance press keeps; follows a budget or wraps a scorer (<c>kvcrush(h2o)</c>).</summary>
    Selector,
    /// <summary>Compresses while generating (<c>--decode-press</c>: <c>rkv</c>, <c>h2o</c>); see <see cref="DecodePressRegistry"/>.</summary>
    Decode,
}

/// <summary>One parameter of a registered scorer or budget.</summary>
/// <param name="Name">As written in the text form.</param>
/// <param name="Default">Default value, as written.</param>
/// <param name="Description">What it controls and its valid range.</param>
public sealed record PressParameter(string Name, string Default, string Description);

/// <summary>A registered scorer or budget: its name, aliases, summary and parameters.</summary>
/// <param name="Name">Canonical name.</param>
/// <param name="Kind">Scorer or budget.</param>
/// <param name="Summary">One line on what it does.</param>
/// <param name="Parameters">Its own parameters (budgets also take keep/tokens/total).</param>
/// <param name="Aliases">Other names accepted for it.</param>
public sealed record PressDescription(string Name, PressPartKind Kind, string Summary, IReadOnlyList<PressParameter> Parameters, IReadOnlyList<string> Aliases);
