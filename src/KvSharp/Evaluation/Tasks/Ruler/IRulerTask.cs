namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>A RULER synthetic task: builds one prompt and its expected outputs from a haystack size and random draws.</summary>
public interface IRulerTask
{
    /// <summary>Task name (e.g. <c>niah_multikey_1</c>).</summary>
    string Name { get; }

    /// <summary>Answer budget (RULER's tokens_to_generate), counted in the record's length.</summary>
    int TokensToGenerate { get; }

    /// <summary>How the answers are scored.</summary>
    ScoreKind Score { get; }

    /// <summary>Step by which the haystack shrinks when a sample comes out too long.</summary>
    int Increment { get; }

    /// <summary>The prompt (context, question and answer prefix) and expected outputs for a haystack of <paramref name="size"/> units.</summary>
    (string Input, IReadOnlyList<string> Outputs) Generate(int size, RulerRandom random);
}
