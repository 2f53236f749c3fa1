namespace KvSharp.Generation;

/// <summary>TEMPORARY (gpupress2's A/B call): KVSHARP_AB_OLD=1 runs the decode press's host work as before this branch.</summary>
internal static class AbSwitch
{
    public static readonly bool Old = Environment.GetEnvironmentVariable("KVSHARP_AB_OLD") == "1";
}
