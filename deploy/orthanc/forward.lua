-- Orthanc auto-forward of stable studies to predictd (deploy/compose.yaml mounts it; orthanc.json loads it).
-- The end-to-end tests run this very script against a real Orthanc (tests/e2e/orthanc.py). Why each rule exists:
--  * predictd sends its Comprehensive SR (and, with [report] key_images, its overlays) back into the same study.
--    That makes the study unstable and, StableAge seconds later, stable again, so this callback runs once more for
--    the same study. Without the ForwardedToPredictd marker the images would be re-sent and reported again, forever.
--  * SR instances (predictd's own results, or anyone's reports) and predictd's own series are never forwarded:
--    predictd classifies images.
--  * RestApiPost may return nil on failure instead of raising, so the result is checked explicitly; on failure
--    nothing is marked and the next stable event (or a manual re-send) tries again.
--  * Every run ends with one "predictd-forward: study <id>: ..." line in Orthanc's log.
--
-- Requires in the Orthanc configuration: DicomModalities.PREDICTD (predictd's AE title, host and port) and
-- UserMetadata {"ForwardedToPredictd": 1024}; both are in deploy/orthanc/orthanc.json.

local MODALITY = 'PREDICTD'
local MARKER = 'ForwardedToPredictd'
local OWN_MANUFACTURER = 'predictd'

local function IsMarked(instanceId)
   -- GET /instances/{id}/metadata/ForwardedToPredictd is an error (logged) when the marker is absent, so read the
   -- list of metadata names instead and look for the marker in it.
   local listing = RestApiGet('/instances/' .. instanceId .. '/metadata')
   if listing == nil then
      return false
   end
   for _, name in ipairs(ParseJson(listing)) do
      if name == MARKER then
         return true
      end
   end
   return false
end

local function IsOwnOrReport(seriesTags)
   -- Modality, Manufacturer and SeriesDescription are series-level main DICOM tags in Orthanc, so the decision
   -- is taken once per series instead of reading each instance's tags.
   local modality = seriesTags['Modality'] or ''
   local manufacturer = string.lower(seriesTags['Manufacturer'] or '')
   local description = string.lower(seriesTags['SeriesDescription'] or '')
   return modality == 'SR' or manufacturer == OWN_MANUFACTURER or string.find(description, 'predictd', 1, true) ~= nil
end

function OnStableStudy(studyId, tags, metadata)
   -- The study's instances, grouped by series: /studies/{id}/series carries each series' tags and instance ids.
   local answer = RestApiGet('/studies/' .. studyId .. '/series')
   if answer == nil then
      print('predictd-forward: study ' .. studyId .. ': cannot list series, nothing sent')
      return
   end

   local toSend = {}
   local skipped = 0
   for _, series in ipairs(ParseJson(answer)) do
      local ownOrReport = IsOwnOrReport(series['MainDicomTags'] or {})
      for _, instanceId in ipairs(series['Instances'] or {}) do
         if ownOrReport or IsMarked(instanceId) then
            skipped = skipped + 1
         else
            table.insert(toSend, instanceId)
         end
      end
   end

   if #toSend == 0 then
      print('predictd-forward: study ' .. studyId .. ': sent 0, skipped ' .. skipped)
      return
   end

   local body = DumpJson({ Resources = toSend, Synchronous = true })
   local result = RestApiPost('/modalities/' .. MODALITY .. '/store', body)
   if result == nil then
      print('predictd-forward: study ' .. studyId .. ': FAILED to send ' .. #toSend ..
            ' instance(s) to ' .. MODALITY .. ', skipped ' .. skipped)
      return
   end

   for _, instanceId in ipairs(toSend) do
      if RestApiPut('/instances/' .. instanceId .. '/metadata/' .. MARKER, '1') == nil then
         print('predictd-forward: could not mark instance ' .. instanceId .. ' as forwarded')
      end
   end
   print('predictd-forward: study ' .. studyId .. ': sent ' .. #toSend .. ', skipped ' .. skipped)
end
